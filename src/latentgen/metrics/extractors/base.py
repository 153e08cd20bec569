"""The feature-extractor interface and what every extractor shares: uint8 conversion, fingerprints of the
weights (part of the reference-cache key), plain state_dict loading and resize-and-normalize."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from latentgen.errors import CheckpointError, DataError

__all__ = ["FeatureExtractor", "file_sha256", "load_plain_state_dict", "resize_normalize", "tensor_fingerprint",
           "to_uint8_images"]  # fmt: skip


def to_uint8_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) from uint8 or float images.

    uint8 input is passed through. Float input is taken to be in [-1, 1] (the project's batch
    convention), clamped and quantized as ``round((x + 1) * 127.5)`` -- what saving it as a PNG gives.
    One channel is repeated to three.
    """
    if images.dim() != 4:
        raise DataError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        if not images.is_floating_point():
            raise DataError(f"images must be uint8 in [0, 255] or float in [-1, 1], got dtype {images.dtype}")
        images = ((images.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    c = images.shape[1]
    if c == 1:
        images = images.expand(-1, 3, -1, -1)  # (B, 3, H, W) grey to RGB
    elif c != 3:
        raise DataError(f"images must have 1 or 3 channels, got {c} (shape {tuple(images.shape)})")
    return images.contiguous()


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def tensor_fingerprint(module: nn.Module) -> str:
    h = hashlib.sha256()
    for key, t in module.state_dict().items():
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_plain_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` of a flat {name: tensor} dict, with a clear error otherwise."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # re-raised with the file name and the fix
        raise CheckpointError(
            f"{what}: could not load '{path}' with torch.load(weights_only=True) ({type(e).__name__}: {e}). "
            "The file must be a plain state_dict of tensors; re-download it or point extractor.weights_path elsewhere."
        ) from e
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{what}: '{path}' does not hold a flat state_dict of tensors")
    return dict(state)


class FeatureExtractor(nn.Module):
    """Base class: frozen, eval-mode network mapping uint8 images to features (and maybe logits)."""

    name: str = "feature-extractor"
    feature_dim: int = 0
    has_logits: bool = False
    weights_label: str = "unknown weights"

    def __init__(self) -> None:
        super().__init__()
        self.weights_file: Path | None = None
        self._fingerprint: str | None = None

    def fingerprint(self) -> str:
        """sha256 of the weights file (or of the parameters when there is no file); part of cache keys."""
        if self._fingerprint is None:
            if self.weights_file is not None:
                self._fingerprint = file_sha256(self.weights_file)
            else:
                self._fingerprint = tensor_fingerprint(self)
        return self._fingerprint

    def train(self, mode: bool = True) -> FeatureExtractor:
        # Always eval: BatchNorm statistics and dropout must never change during evaluation.
        return super().train(False)

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def _check_input(images: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise DataError(
                f"feature extractors take uint8 images of shape (B, 3, H, W); got dtype {images.dtype}, "
                f"shape {tuple(images.shape)}. Convert with latentgen.metrics.to_uint8_images."
            )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


def resize_normalize(images: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float (B, 3, size, size): bicubic (antialiased) resize, then ``(x - mean) / std``."""
    x = images.float() / 255.0  # (B, 3, H, W) in [0, 1]
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s
