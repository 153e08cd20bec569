"""What the network predicts: eps, x0, v or the flow velocity, and the conversions between them.

With ``x_t = alpha x0 + sigma eps`` every parameterization here is a linear function of (x0, eps)
at fixed ``t``, so any one of them, together with ``x_t``, determines ``(x0_hat, eps_hat)``:

===================  =====================================  ===============================================
class                target                                  inverse (given x_t)
===================  =====================================  ===============================================
EpsPrediction        eps (Ho et al. 2020, Eq. 14)            x0 = (x_t - sigma eps) / alpha
X0Prediction         x0                                      eps = (x_t - alpha x0) / sigma
VPrediction          v = alpha eps - sigma x0                x0 = (alpha x_t - sigma v) / (alpha^2+sigma^2)
                     (Salimans & Ho 2022)                    eps = (sigma x_t + alpha v) / (alpha^2+sigma^2)
VelocityPrediction   u = d_alpha x0 + d_sigma eps            x0 = (d_sigma x_t - sigma u) / D,
                     (RF: u = eps - x0; Esser et al. §2)     eps = (alpha u - d_alpha x_t) / D,
                                                             D = alpha d_sigma - sigma d_alpha (RF: D = 1)
===================  =====================================  ===============================================

``velocity(out, x_t, s)`` is the probability-flow ODE drift dx/dt = d_alpha x0_hat + d_sigma eps_hat
(exact for the deterministic interpolant; Song et al. 2021b, Eq. 13 written in (alpha, sigma) form).

**Edges.** Divisions by alpha (eps-prediction) and sigma (x0-prediction) use ``clamp_min(EPS)`` with
``EPS = 1e-8``; where the divisor is really 0 the quantity is not identifiable:

- eps-prediction at alpha = 0 (zero-terminal SNR or rectified flow at t=1) cannot recover x0. This is
  rejected up front by :meth:`Prediction.check_schedule` (called by ``Objective``) with a ConfigError.
- x0-prediction at sigma = 0 (t = 0 of a continuous path) gives an undefined eps_hat; samplers never
  evaluate a network at sigma = 0 except the adaptive solver on a continuous path, which should then use
  velocity/v-prediction (documented in ``samplers/base.py``).

**Min-SNR weights** (Hang et al. 2023). The min-SNR-gamma loss is ``min(snr, gamma) * ||x0_hat - x0||^2``
expressed in each parameterization. At fixed ``x_t`` the error of a prediction maps linearly onto the x0
error, ``x0_err = c(t) * pred_err``, so the weight on the prediction-space MSE is
``min(snr, gamma) * c(t)^2``; ``x0_error_scale`` returns ``c^2``:

- eps: c = -sigma/alpha -> c^2 = 1/snr                 -> min(snr, gamma)/snr
- x0:  c = 1                                            -> min(snr, gamma)
- v:   c = -sigma/(alpha^2+sigma^2) -> VP: sigma^2 = 1/(snr+1) -> min(snr, gamma)/(snr + 1)
- velocity: c = -sigma/D -> RF: c^2 = t^2              -> min(snr, gamma) * t^2 = min((1-t)^2, gamma t^2)
"""

from __future__ import annotations

import torch

from latentgen.errors import ConfigError
from latentgen.generative.schedules import NoiseSchedule, ScheduleOutput

__all__ = ["Prediction", "EpsPrediction", "X0Prediction", "VPrediction", "VelocityPrediction", "EPS"]

EPS = 1e-8  # clamp of the divisors alpha, sigma (and D) in the conversions


class Prediction:
    """Base class: a parameterization of the network output. Stateless; subclasses implement
    :meth:`target`, :meth:`to_x0_eps` and :meth:`x0_error_scale`.

    All methods take ``s`` already broadcastable against the tensors (see ``ScheduleOutput.reshape_like``).
    """

    name: str = "prediction"

    def target(self, x0: torch.Tensor, eps: torch.Tensor, s: ScheduleOutput) -> torch.Tensor:
        raise NotImplementedError

    def to_x0_eps(self, out: torch.Tensor, x_t: torch.Tensor, s: ScheduleOutput) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def velocity(self, out: torch.Tensor, x_t: torch.Tensor, s: ScheduleOutput) -> torch.Tensor:
        """Probability-flow ODE drift dx/dt = d_alpha x0_hat + d_sigma eps_hat."""
        x0, eps = self.to_x0_eps(out, x_t, s)
        return s.d_alpha_t * x0 + s.d_sigma_t * eps

    def x0_error_scale(self, s: ScheduleOutput) -> torch.Tensor:
        """c(t)^2 with x0_err = c(t) * pred_err at fixed x_t (see module docstring)."""
        raise NotImplementedError

    def min_snr_weight(self, s: ScheduleOutput, gamma: float) -> torch.Tensor:
        """Min-SNR-gamma weight on this prediction's MSE (Hang et al. 2023)."""
        snr = s.alpha_t**2 / (s.sigma_t**2).clamp_min(EPS**2)
        return torch.clamp(snr, max=gamma) * self.x0_error_scale(s)

    def check_schedule(self, schedule: NoiseSchedule) -> None:
        """Raise ConfigError if this parameterization cannot be used with ``schedule``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EpsPrediction(Prediction):
    """Predict the noise eps (Ho et al. 2020, Eq. 14 "L_simple")."""

    name = "eps"

    def target(self, x0, eps, s):
        return eps

    def to_x0_eps(self, out, x_t, s):
        # Ho et al. Eq. 15 (x0 from eps): x0 = (x_t - sigma eps) / alpha
        return (x_t - s.sigma_t * out) / s.alpha_t.clamp_min(EPS), out

    def x0_error_scale(self, s):
        return s.sigma_t**2 / (s.alpha_t**2).clamp_min(EPS**2)  # 1 / snr

    def check_schedule(self, schedule):
        alpha_1 = float(schedule(torch.ones(1, dtype=torch.float64)).alpha_t.abs().max())
        if alpha_1 < 1e-6:
            raise ConfigError(
                f"objective.prediction=EpsPrediction cannot be used with {schedule!r}: alpha(t=1) = 0 "
                "(zero-terminal SNR or a flow path), so x0 cannot be recovered from eps at t=1. "
                "Use VPrediction, X0Prediction or VelocityPrediction (e.g. objective=ddpm_v_ztsnr)."
            )


class X0Prediction(Prediction):
    """Predict the clean sample x0."""

    name = "x0"

    def target(self, x0, eps, s):
        return x0

    def to_x0_eps(self, out, x_t, s):
        return out, (x_t - s.alpha_t * out) / s.sigma_t.clamp_min(EPS)

    def x0_error_scale(self, s):
        return torch.ones_like(s.alpha_t)


class VPrediction(Prediction):
    """Predict v = alpha eps - sigma x0 (Salimans & Ho 2022). For VP schedules this is
    sqrt(abar) eps - sqrt(1 - abar) x0; the inverse below is valid for any (alpha, sigma)."""

    name = "v"

    def target(self, x0, eps, s):
        return s.alpha_t * eps - s.sigma_t * x0

    def to_x0_eps(self, out, x_t, s):
        # [x_t; v] = [[alpha, sigma], [-sigma, alpha]] [x0; eps], determinant alpha^2 + sigma^2 > 0
        det = s.alpha_t**2 + s.sigma_t**2
        x0 = (s.alpha_t * x_t - s.sigma_t * out) / det
        eps = (s.sigma_t * x_t + s.alpha_t * out) / det
        return x0, eps

    def x0_error_scale(self, s):
        det = s.alpha_t**2 + s.sigma_t**2
        return s.sigma_t**2 / det**2  # VP: sigma^2 = 1/(snr + 1)


class VelocityPrediction(Prediction):
    """Predict the flow velocity u = d_alpha x0 + d_sigma eps (rectified flow: u = eps - x0)."""

    name = "velocity"

    def target(self, x0, eps, s):
        return s.d_alpha_t * x0 + s.d_sigma_t * eps

    @staticmethod
    def _det(s: ScheduleOutput) -> torch.Tensor:
        # [x_t; u] = [[alpha, sigma], [d_alpha, d_sigma]] [x0; eps]
        return s.alpha_t * s.d_sigma_t - s.sigma_t * s.d_alpha_t

    def to_x0_eps(self, out, x_t, s):
        det = self._det(s).clamp_min(EPS)
        x0 = (s.d_sigma_t * x_t - s.sigma_t * out) / det
        eps = (s.alpha_t * out - s.d_alpha_t * x_t) / det
        return x0, eps

    def velocity(self, out, x_t, s):
        return out  # the prediction *is* the ODE drift

    def x0_error_scale(self, s):
        return s.sigma_t**2 / self._det(s).clamp_min(EPS) ** 2  # RF: t^2

    def check_schedule(self, schedule):
        t = torch.linspace(schedule.t_min, 1.0, 17, dtype=torch.float64)
        if float(self._det(schedule(t)).min()) <= 0:
            raise ConfigError(
                "objective.prediction=VelocityPrediction needs a schedule with d(sigma/alpha)/dt > 0; "
                f"{schedule!r} has not"
            )
