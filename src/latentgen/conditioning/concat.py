"""Concat conditioners: image-shaped conditions concatenated to the noisy latent ``x_t`` (LDM §4.3-4.5).

Each returns ``Conditioning(concat=(B, C_c, h, w))`` at the latent size ``h = H / f``; the denoiser's
``in_channels`` is ``latent_channels + C_c`` by config interpolation, and every conditioner checks
that the ``concat_channels`` its config declares is what it produces. One module each:

- :mod:`latentgen.conditioning.superres`: :class:`LowResConditioner` (super-resolution) and
  :class:`EncodedLowResConditioner` (the low-res image encoded by the first stage);
- :mod:`latentgen.conditioning.inpainting`: :class:`InpaintingConditioner` (``cat(E((1 - m) * x), m_lat)``);
- :mod:`latentgen.conditioning.semantic`: :class:`SemanticMapConditioner` (one-hot segmentation) and
  :class:`EmbeddedSemanticMapConditioner` (a learned embedding per class).

This module holds what they share: reading images from the batch, zeroing the concat of dropped samples
(``drop_prob``, for CFG; ``null(batch)`` is all zeros too), resizing, and the first-stage mixin.
Conditioners that use the first stage receive it through ``set_first_stage`` (the system calls it)
and hold it by reference (:class:`~latentgen.conditioning.shared.SharedModule`): the EMA deep copy
shares it and it is not in the conditioner's ``state_dict``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latentgen.conditioning.base import Conditioner, check_declared_dims
from latentgen.conditioning.shared import SharedModule
from latentgen.errors import ConfigError, DataError


def read_images(batch: dict[str, Any], who: str) -> torch.Tensor:
    image = batch.get("image")
    if image is None:
        raise DataError(
            f"{who} needs batch['image'] (B, C, H, W) in [-1, 1], but the batch has keys {sorted(batch)}. "
            "With data.cache_latents=true the images are not loaded: set data.cache_latents=false for this task."
        )
    if image.dim() != 4:
        raise DataError(f"{who}: batch['image'] must be (B, C, H, W), got shape {tuple(image.shape)}")
    return image.float()


def zero_dropped(concat: torch.Tensor, drop_mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the concat channels of dropped samples: (B, C, h, w) -> (B, C, h, w)."""
    if drop_mask is None:
        return concat
    keep = (~drop_mask.to(concat.device))[:, None, None, None].to(concat.dtype)  # (B, 1, 1, 1)
    return concat * keep


def resize(x: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Bicubic (antialiased when shrinking) resize of (B, C, H, W) to (B, C, *size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    antialias = shrink and mode in ("bilinear", "bicubic")
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias)


def _check_stored_mode(conditioner: Conditioner, mode: str | None, classes: dict[str, str]) -> None:
    """Configs stored by older runs name a ``mode``; the mode is now the class. Refuse one that names the
    other class, saying which class to use."""
    if mode is None or mode == type(conditioner).mode_name:  # type: ignore[attr-defined]
        return
    if mode not in classes:
        raise ConfigError(f"conditioner.mode={mode!r} is unknown; the mode is the class: {sorted(classes.values())}")
    raise ConfigError(
        f"conditioner.mode={mode!r} is {classes[mode]}, not {type(conditioner).__name__}: set the conditioner's "
        f"_target_ to {type(conditioner).__module__}.{classes[mode]} and drop `mode`"
    )


def _check_declared(
    name: str, concat_channels: int, context_dim: int | None, vector_dim: int | None, produced: int, why: str
) -> None:
    check_declared_dims(name, (concat_channels, context_dim, vector_dim), (produced, None, None), why)


class _FirstStageUser:
    """Mixin: ``set_first_stage`` stores the autoencoder by reference and checks its latent contract."""

    latent_channels: int
    downsample_factor: int
    _first_stage: SharedModule | None

    def set_first_stage(self, first_stage: nn.Module) -> None:
        c, f = int(first_stage.latent_channels), int(first_stage.downsample_factor)
        if (c, f) != (self.latent_channels, self.downsample_factor):
            raise ConfigError(
                f"{type(self).__name__}: configured for latent_channels={self.latent_channels}, "
                f"downsample_factor={self.downsample_factor} but the first stage has {c}, {f}; interpolate "
                "${autoencoder.latent_channels} and ${autoencoder.downsample_factor}"
            )
        self._first_stage = SharedModule(first_stage)

    @torch.no_grad()
    def encode_first_stage(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled latent (posterior mean) of (B, C, H, W) images: (B, latent_channels, H/f, W/f)."""
        if self._first_stage is None:
            raise ConfigError(
                f"{type(self).__name__} encodes images with the first stage, but none was set: the latent system "
                "calls conditioner.set_first_stage(autoencoder); do that yourself when using the conditioner alone"
            )
        fs = self._first_stage.on(images.device)
        p = next(fs.parameters(), None)  # None for the identity first stage (f = 1)
        return fs.encode_scaled(images if p is None else images.to(p.dtype), sample=False).float()
