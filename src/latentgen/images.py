"""Image grids as files: the one place that turns a batch in [-1, 1] into a PNG."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None) -> torch.Tensor:
    """Write (N, C, H, W) images in [-1, 1] as one grid PNG (``nrow`` per row, default about sqrt(N)) with a
    1-pixel white border; returns the grid (C, H', W') in [0, 1] for loggers."""
    images = ((images.float().cpu() + 1) / 2).clamp(0, 1)
    nrow = nrow or max(1, int(math.sqrt(images.shape[0])))
    grid = make_grid(images, nrow=nrow, padding=1, pad_value=1.0)  # (C, H', W')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    return grid
