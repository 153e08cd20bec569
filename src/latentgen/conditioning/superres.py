"""Super-resolution conditioners (LDM §4.4): the conditioner makes ``low_res = downsample(image, factor)``
itself (bicubic, antialiased), then :class:`LowResConditioner` resizes it bicubically to the latent size
(with factor = f that is the LDM SR layout) and :class:`EncodedLowResConditioner` resizes it back to full
size and encodes it with the first stage.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from latentgen.conditioning.base import Conditioner, Conditioning
from latentgen.errors import ConfigError, DataError
from latentgen.conditioning.concat import (
    _check_declared,
    _check_stored_mode,
    _FirstStageUser,
    read_images,
    resize,
    zero_dropped,
)


class LowResConditioner(_FirstStageUser, Conditioner):
    """Super-resolution: the conditioner makes ``low_res = downsample(image, factor)`` itself.

    At sampling time ``batch["low_res"]`` (B, C, H/factor, W/factor) may give the low-res input directly;
    otherwise it is made from ``batch["image"]`` (the high-res target), as in training.

    Args:
        factor: the super-resolution factor (4: 32 px -> 8 px -> 32 px).
        downsample_factor, latent_channels, image_channels: the latent / data contract (interpolated).
        drop_prob: per-sample probability of the zero (null) condition during training.
        mode: only for configs stored by older runs (``resize`` here; ``encode`` is
            :class:`EncodedLowResConditioner`).

    The concat is the low-res input bicubic-resized to the latent size: ``image_channels`` channels.
    """

    mode_name = "resize"

    accepts_prompts = False
    input_keys = ("image",)

    def __init__(
        self,
        factor: int = 4,
        downsample_factor: int = 4,
        image_channels: int = 3,
        latent_channels: int = 3,
        drop_prob: float = 0.0,
        concat_channels: int = 3,
        context_dim: int | None = None,
        vector_dim: int | None = None,
        mode: str | None = None,
    ) -> None:
        super().__init__(drop_prob=drop_prob)
        _check_stored_mode(self, mode, {"resize": "LowResConditioner", "encode": "EncodedLowResConditioner"})
        if int(factor) < 1:
            raise ConfigError(f"conditioner.factor={factor} must be >= 1")
        self.factor = int(factor)
        self.downsample_factor, self.latent_channels = int(downsample_factor), int(latent_channels)
        self.image_channels = int(image_channels)
        produced, why = self.produced_channels()
        _check_declared("superres", concat_channels, context_dim, vector_dim, produced, why)
        self.concat_channels, self.context_dim, self.vector_dim = produced, None, None
        self._first_stage = None

    def produced_channels(self) -> tuple[int, str]:
        """The concat's channels and where they come from."""
        return self.image_channels, "image channels: the low-res image resized to the latent size"

    def concat_of(self, low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The concat (B, C_c, h, w) of the low-res input (B, C, H/factor, W/factor) for full size ``size``."""
        h, w = size
        return resize(low, (h // self.downsample_factor, w // self.downsample_factor))  # (B, C, h, w)

    def low_res(self, batch: dict[str, Any]) -> torch.Tensor:
        """(B, C, H/factor, W/factor) in [-1, 1]: ``batch["low_res"]`` or the downsampled ``batch["image"]``."""
        if batch.get("low_res") is not None:
            return batch["low_res"].float()
        image = read_images(batch, "conditioner=superres")
        h, w = image.shape[-2:]
        if h % self.factor or w % self.factor:
            raise DataError(
                f"conditioner=superres: image size {h}x{w} is not divisible by conditioner.factor={self.factor}"
            )
        return resize(image, (h // self.factor, w // self.factor)).clamp(-1, 1)  # (B, C, H/s, W/s)

    def _full_size(self, batch: dict[str, Any], low: torch.Tensor) -> tuple[int, int]:
        if batch.get("image") is not None:
            return tuple(batch["image"].shape[-2:])  # type: ignore[return-value]
        return low.shape[-2] * self.factor, low.shape[-1] * self.factor

    def encode(self, batch: dict[str, Any], drop_mask: torch.Tensor | None) -> Conditioning:
        low = self.low_res(batch)
        concat = self.concat_of(low, self._full_size(batch, low))  # (B, C_c, h, w)
        return Conditioning(concat=zero_dropped(concat, drop_mask))

    @torch.no_grad()
    def visualize(self, batch: dict[str, Any]) -> torch.Tensor:
        """The low-res input, pixel-replicated to full size: (B, C, H, W) in [-1, 1]."""
        low = self.low_res(batch)
        return F.interpolate(low, size=self._full_size(batch, low), mode="nearest")

    def bicubic_baseline(self, batch: dict[str, Any]) -> torch.Tensor:
        """The low-res input bicubically upsampled to full size (the baseline for PSNR/SSIM)."""
        low = self.low_res(batch)
        return resize(low, self._full_size(batch, low)).clamp(-1, 1)


class EncodedLowResConditioner(LowResConditioner):
    """Super-resolution with the low-res input bicubic-upsampled to full size and encoded by the first stage:
    the concat has ``latent_channels`` channels."""

    mode_name = "encode"

    def produced_channels(self) -> tuple[int, str]:
        return self.latent_channels, "latent channels: the upsampled low-res image encoded by the first stage"

    def concat_of(self, low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.encode_first_stage(resize(low, size).clamp(-1, 1))  # (B, C_lat, h, w)
