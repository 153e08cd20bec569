"""Inpainting masks: random boxes and free-form brush strokes, deterministic under a ``torch.Generator``.

Every mask is ``(N, 1, H, W)`` float32 with 1 = missing pixels (the region to fill) and 0 = known,
the LDM convention (``masked_image = (1 - mask) * image``). All random numbers are drawn on the CPU
from the given generator, so the same generator state gives the same masks on every device.
Coordinates are fractions of the image side, so a mask means the same at every resolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from latentgen.errors import ConfigError

MASK_KINDS = ("box", "stroke")


def _uniform(lo: float, hi: float, generator: torch.Generator | None, shape: tuple[int, ...] = ()) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=generator, dtype=torch.float64)


def _pixel_centres(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    ys = (torch.arange(h, dtype=torch.float64) + 0.5) / h  # (H,)
    xs = (torch.arange(w, dtype=torch.float64) + 0.5) / w  # (W,)
    return ys[:, None], xs[None, :]  # (H, 1), (1, W)


def box_mask(
    size: tuple[int, int], generator: torch.Generator | None, min_side: float = 0.25, max_side: float = 0.6
) -> torch.Tensor:
    """One axis-aligned rectangle with sides in [min_side, max_side] of the image side: (1, H, W)."""
    h, w = size
    bh, bw = _uniform(min_side, max_side, generator, (2,)).tolist()
    y0, x0 = _uniform(0.0, 1.0 - bh, generator).item(), _uniform(0.0, 1.0 - bw, generator).item()
    ys, xs = _pixel_centres(h, w)
    inside = (ys >= y0) & (ys < y0 + bh) & (xs >= x0) & (xs < x0 + bw)  # (H, W)
    return inside.float()[None]  # (1, H, W)


def stroke_mask(
    size: tuple[int, int],
    generator: torch.Generator | None,
    max_strokes: int = 3,
    max_vertices: int = 5,
    min_radius: float = 0.04,
    max_radius: float = 0.09,
) -> torch.Tensor:
    """Free-form brush strokes (random polylines of round brushes, as in LaMa / DeepFill v2): (1, H, W)."""
    h, w = size
    ys, xs = _pixel_centres(h, w)
    mask = torch.zeros(h, w, dtype=torch.bool)
    n_strokes = int(torch.randint(1, max_strokes + 1, (), generator=generator))
    for _ in range(n_strokes):
        n_vertices = int(torch.randint(2, max_vertices + 1, (), generator=generator))
        radius = _uniform(min_radius, max_radius, generator).item()
        a = _uniform(0.1, 0.9, generator, (2,))  # (y, x) start
        for _ in range(n_vertices - 1):
            length = _uniform(0.15, 0.4, generator).item()
            angle = _uniform(0.0, 2 * math.pi, generator).item()
            b = (a + length * torch.tensor([math.sin(angle), math.cos(angle)], dtype=torch.float64)).clamp(0.0, 1.0)
            # distance of every pixel centre to the segment a-b
            d = b - a  # (2,)
            t = ((ys - a[0]) * d[0] + (xs - a[1]) * d[1]) / d.pow(2).sum().clamp_min(1e-12)  # (H, W)
            t = t.clamp(0.0, 1.0)
            dist = torch.hypot(ys - (a[0] + t * d[0]), xs - (a[1] + t * d[1]))  # (H, W)
            mask |= dist <= radius
            a = b
    return mask.float()[None]  # (1, H, W)


def random_masks(
    n: int, size: tuple[int, int], generator: torch.Generator | None = None, kinds: Sequence[str] = MASK_KINDS
) -> torch.Tensor:
    """``n`` masks, each a box or strokes (chosen uniformly from ``kinds``): (N, 1, H, W) in {0, 1}.

    Mask ``i`` depends only on the generator state and the masks before it, so a prefix of a batch
    gets the same masks whatever the batch size.
    """
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in MASK_KINDS]
    if not kinds or bad:
        raise ConfigError(f"conditioner.mask_kinds={list(kinds)}: choose from {list(MASK_KINDS)}")
    out = []
    for _ in range(n):
        kind = kinds[int(torch.randint(len(kinds), (), generator=generator))]
        m = box_mask(size, generator) if kind == "box" else stroke_mask(size, generator)
        if m.sum() == 0:  # a degenerate draw (tiny image): mask the centre pixel
            m[:, size[0] // 2, size[1] // 2] = 1.0
        out.append(m)
    return torch.stack(out)  # (N, 1, H, W)


def centre_box_masks(n: int, size: tuple[int, int], side: float = 0.5) -> torch.Tensor:
    """A centred square of ``side`` (fraction of the image side) for every sample: (N, 1, H, W)."""
    h, w = size
    ys, xs = _pixel_centres(h, w)
    lo, hi = 0.5 - side / 2, 0.5 + side / 2
    m = ((ys >= lo) & (ys < hi) & (xs >= lo) & (xs < hi)).float()  # (H, W)
    return m[None, None].expand(n, 1, h, w).clone()
