"""Conditioners: turn a batch into a :class:`Conditioning` for the denoiser, with per-sample dropout for CFG."""

from latentgen.conditioning.base import Conditioner, Conditioning

__all__ = ["Conditioner", "Conditioning"]
