"""Denoiser networks, one family per file: ``denoiser(x_t, t, cond) -> Tensor``."""

from latentgen.networks.dit import DiT
from latentgen.networks.unet import UNet, UNetBlock

__all__ = ["DiT", "UNet", "UNetBlock"]
