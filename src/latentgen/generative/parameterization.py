"""What a sampler needs to know of a trained model: its schedule, what it predicts, and whether it
learned the variance. The training :class:`~latentgen.generative.objective.Objective` has one
(``objective.parameterization``); samplers take this, not the objective.

**Learned variance** (iDDPM, Nichol & Dhariwal 2021, Eq. 15): the network returns 2C channels, the
prediction then ``v in [-1, 1]``, and ``log Sigma = frac log beta_k + (1 - frac) log beta_tilde_k`` with
``frac = (v + 1)/2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latentgen.errors import ConfigError
from latentgen.generative.predictions import Prediction
from latentgen.generative.schedules import NoiseSchedule

__all__ = ["Parameterization", "interpolate_log_variance"]


def interpolate_log_variance(v: torch.Tensor, log_beta: torch.Tensor, log_beta_tilde: torch.Tensor) -> torch.Tensor:
    """iDDPM Eq. 15: log Sigma = frac log beta + (1 - frac) log beta_tilde, frac = (v + 1)/2."""
    frac = (v + 1.0) / 2.0
    return frac * log_beta + (1.0 - frac) * log_beta_tilde


@dataclass(frozen=True)
class Parameterization:
    """The noise ``schedule``, the network's ``prediction`` and ``learn_variance`` (2C output channels)."""

    schedule: NoiseSchedule
    prediction: Prediction
    learn_variance: bool = False

    def model_outputs(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Split the raw network output (B, C[*2], H, W) into (prediction (B, C, H, W), v or None)."""
        if not self.learn_variance:
            return raw, None
        if raw.shape[1] % 2:
            raise ConfigError(
                f"objective.learn_variance=true but the denoiser returned {raw.shape[1]} channels (odd); its "
                "out_channels must be ${out_channels:latent_channels,${objective.learn_variance}}"
            )
        pred, v = raw.chunk(2, dim=1)  # (B, C, H, W) each
        return pred, v
