"""Semantic-map conditioners (LDM §4.3): the ``(B, H, W)`` int64 segmentation ``batch["mask"]`` one-hot and
area-averaged to the latent size (class fractions per latent pixel) by :class:`SemanticMapConditioner`;
:class:`EmbeddedSemanticMapConditioner` learns an embedding per class instead of the one-hot.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latentgen.conditioning.base import Conditioner, Conditioning
from latentgen.errors import ConfigError, DataError
from latentgen.conditioning.concat import _check_declared, _check_stored_mode, zero_dropped


# A fixed palette for visualizing segmentation maps (class 0 = background in dark grey).
_PALETTE = torch.tensor(
    [[0.15, 0.15, 0.15], [0.90, 0.10, 0.10], [0.10, 0.80, 0.10], [0.15, 0.35, 1.00], [1.00, 0.85, 0.05],
     [0.90, 0.15, 0.90], [0.05, 0.90, 0.90], [1.00, 1.00, 1.00], [1.00, 0.55, 0.05], [0.55, 0.30, 0.10]]
)  # fmt: skip


class SemanticMapConditioner(Conditioner):
    """Semantic synthesis: ``batch["mask"]`` (B, H, W) int64 labels in [0, num_classes) -> concat at latent size.

    The concat is the one-hot map area-averaged to the latent size: ``num_classes`` channels of class
    fractions per latent pixel (:class:`EmbeddedSemanticMapConditioner`: a learned embedding instead).

    Args:
        num_classes: number of labels in the map (shapes: 7 = background + 6 kinds).
        downsample_factor: f of the first stage (latent size = H / f).
        drop_prob: per-sample probability of the zero (null) condition during training.
        mode: only for configs stored by older runs (``onehot`` here; ``embed`` is
            :class:`EmbeddedSemanticMapConditioner`).
    """

    accepts_prompts = False
    input_keys = ("mask",)
    mode_name = "onehot"

    def __init__(
        self,
        num_classes: int,
        downsample_factor: int = 4,
        drop_prob: float = 0.0,
        concat_channels: int = 0,
        context_dim: int | None = None,
        vector_dim: int | None = None,
        mode: str | None = None,
    ) -> None:
        super().__init__(drop_prob=drop_prob)
        self._set_map(num_classes, downsample_factor, mode)
        self._declare(self.num_classes, "one-hot: num_classes channels", concat_channels, context_dim, vector_dim)

    def _set_map(self, num_classes: int, downsample_factor: int, mode: str | None) -> None:
        _check_stored_mode(self, mode, {"onehot": "SemanticMapConditioner", "embed": "EmbeddedSemanticMapConditioner"})
        if int(num_classes) < 2:
            raise ConfigError(f"conditioner.num_classes={num_classes} must be >= 2")
        self.num_classes = int(num_classes)
        self.downsample_factor = int(downsample_factor)

    def _declare(
        self, produced: int, why: str, concat_channels: int, context_dim: int | None, vector_dim: int | None
    ) -> None:
        _check_declared("semantic", concat_channels, context_dim, vector_dim, produced, why)
        self.concat_channels, self.context_dim, self.vector_dim = produced, None, None

    def per_pixel(self, seg: torch.Tensor) -> torch.Tensor:
        """(B, H, W) labels -> (B, K, H, W) one-hot."""
        return F.one_hot(seg, self.num_classes).permute(0, 3, 1, 2).float()  # (B, H, W, K) -> (B, K, H, W)

    def labels(self, batch: dict[str, Any]) -> torch.Tensor:
        seg = batch.get("mask")
        if seg is None:
            raise DataError(
                f"conditioner=semantic needs batch['mask'] (B, H, W) int64 segmentation, but the batch has keys "
                f"{sorted(batch)}: use data=shapes (its masks: 0 background, 1 + kind)"
            )
        seg = seg.long()
        if seg.dim() == 4 and seg.shape[1] == 1:
            seg = seg[:, 0]  # (B, 1, H, W) -> (B, H, W)
        if seg.dim() != 3:
            raise DataError(f"batch['mask'] must be (B, H, W), got shape {tuple(seg.shape)}")
        if seg.numel() and (seg.min() < 0 or seg.max() >= self.num_classes):
            raise DataError(
                f"segmentation label out of range [0, {self.num_classes}) "
                f"(conditioner.num_classes={self.num_classes}): "
                f"got min {int(seg.min())}, max {int(seg.max())}"
            )
        return seg

    def encode(self, batch: dict[str, Any], drop_mask: torch.Tensor | None) -> Conditioning:
        seg = self.labels(batch)  # (B, H, W)
        h, w = seg.shape[-2] // self.downsample_factor, seg.shape[-1] // self.downsample_factor
        concat = F.interpolate(self.per_pixel(seg), size=(h, w), mode="area")  # (B, K|E, h, w)
        return Conditioning(concat=zero_dropped(concat, drop_mask))

    @torch.no_grad()
    def visualize(self, batch: dict[str, Any]) -> torch.Tensor:
        """The map in a fixed palette: (B, 3, H, W) in [-1, 1] (grey when the images have one channel)."""
        seg = self.labels(batch)
        palette = _PALETTE.to(seg.device)
        colours = palette[seg % len(palette)].permute(0, 3, 1, 2)  # (B, H, W, 3) -> (B, 3, H, W)
        image = batch.get("image")
        if image is not None and image.shape[1] == 1:
            colours = colours.mean(dim=1, keepdim=True)  # (B, 1, H, W)
        return colours * 2 - 1


class EmbeddedSemanticMapConditioner(SemanticMapConditioner):
    """Semantic synthesis with a learned ``embed_dim``-d embedding per class, area-averaged to the latent size:
    the concat has ``embed_dim`` channels."""

    mode_name = "embed"

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        downsample_factor: int = 4,
        drop_prob: float = 0.0,
        concat_channels: int = 0,
        context_dim: int | None = None,
        vector_dim: int | None = None,
        mode: str | None = None,
    ) -> None:
        if embed_dim is None or int(embed_dim) < 1:
            raise ConfigError(f"conditioner.embed_dim={embed_dim} must be >= 1 (the channels of the class embedding)")
        Conditioner.__init__(self, drop_prob=drop_prob)  # not the one-hot's __init__: it declares its channels
        self._set_map(num_classes, downsample_factor, mode)
        self._declare(int(embed_dim), "embedding: embed_dim channels", concat_channels, context_dim, vector_dim)
        self.embedding = nn.Embedding(self.num_classes, int(embed_dim))

    def per_pixel(self, seg: torch.Tensor) -> torch.Tensor:
        """(B, H, W) labels -> (B, E, H, W) class embeddings."""
        return self.embedding(seg).permute(0, 3, 1, 2)  # (B, H, W, E) -> (B, E, H, W)
