"""Per-sample loss weights ``w(t)`` on the prediction-space MSE.

``weighting(s, prediction) -> (B,)`` with ``s`` the (B,)-shaped ScheduleOutput. The weight depends on
the parameterization; that dependence lives on the prediction classes (``Prediction.min_snr_weight``),
so there is no string dispatch here.
"""

from __future__ import annotations

import torch

from latentgen.errors import ConfigError
from latentgen.generative.predictions import Prediction
from latentgen.generative.schedules import ScheduleOutput

__all__ = ["LossWeighting", "UnitWeighting", "MinSNRWeighting"]


class LossWeighting:
    def __call__(self, s: ScheduleOutput, prediction: Prediction) -> torch.Tensor:
        raise NotImplementedError


class UnitWeighting(LossWeighting):
    """w = 1 (L_simple, Ho et al. 2020 Eq. 14, and the plain flow-matching loss)."""

    def __call__(self, s, prediction):
        return torch.ones_like(s.alpha_t)

    def __repr__(self) -> str:
        return "UnitWeighting()"


class MinSNRWeighting(LossWeighting):
    """Min-SNR-gamma (Hang et al. 2023): the x0-space weight min(snr, gamma), converted to the
    prediction's space (eps: min(snr,g)/snr, v: min(snr,g)/(snr+1), x0: min(snr,g), RF velocity:
    min(snr,g) t^2; see ``predictions.py``)."""

    def __init__(self, gamma: float = 5.0) -> None:
        if gamma <= 0:
            raise ConfigError(f"weighting.gamma must be > 0, got {gamma}")
        self.gamma = float(gamma)

    def __call__(self, s, prediction):
        return prediction.min_snr_weight(s, self.gamma)

    def __repr__(self) -> str:
        return f"MinSNRWeighting(gamma={self.gamma})"
