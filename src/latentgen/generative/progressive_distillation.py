"""Progressive distillation targets (Salimans & Ho, ICLR 2022, Alg. 2).

A student that takes one deterministic DDIM step from ``t`` to ``t''`` is trained to land where the teacher
lands with two DDIM steps ``t -> t' -> t''``. DDIM (eta = 0, Song et al. 2021 Eq. 12) from ``(x_t, t)`` to
``s`` with a data prediction ``x0_hat`` is

    x_s = alpha_s x0_hat + sigma_s (x_t - alpha_t x0_hat) / sigma_t.

Solving ``x_t'' = alpha'' x~ + sigma'' (x_t - alpha x~) / sigma`` for the data prediction ``x~`` the student
must make (Salimans & Ho, Alg. 2, the line "x~ = ..."):

    x~ = (x_t'' - (sigma''/sigma) x_t) / (alpha'' - (sigma''/sigma) alpha).

The student then regresses its own prediction type onto the target that ``x~`` (and the ``eps~`` it implies at
``x_t``) give. Everything works per sample: ``t`` is a (B,) tensor, so each sample may sit on its own step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from latentgen.generative.schedules import NoiseSchedule, ScheduleOutput

__all__ = ["ddim_step", "progressive_target", "implied_noise"]

# x0_fn(x_t (B, C, H, W), t (B,)) -> the teacher's data prediction x0_hat (B, C, H, W)
DataPrediction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ddim_step(x0: torch.Tensor, x_t: torch.Tensor, s_from, s_to) -> torch.Tensor:
    """Deterministic DDIM from ``x_t`` (schedule values ``s_from``) to ``s_to`` given ``x0`` (Song et al. Eq. 12,
    eta = 0); the schedule values are ScheduleOutputs shaped like ``x_t`` (B, 1, 1, 1)."""
    eps = (x_t - s_from.alpha_t * x0) / s_from.sigma_t
    return s_to.alpha_t * x0 + s_to.sigma_t * eps


def implied_noise(x0: torch.Tensor, x_t: torch.Tensor, s) -> torch.Tensor:
    """``eps`` with ``x_t = alpha x0 + sigma eps`` (needs sigma > 0)."""
    return (x_t - s.alpha_t * x0) / s.sigma_t


def _grid_values(schedule: NoiseSchedule, t: torch.Tensor, like: torch.Tensor):
    """alpha, sigma at ``t`` (B,) in float64, shaped (B, 1, ..., 1); t = 0 is the data exactly (alpha 1, sigma 0),
    as for the samplers, whose last step lands there whatever a schedule returns at t = 0."""
    s = schedule(t.double()).reshape_like(like).to(torch.float64)
    end = (t == 0).reshape(s.alpha_t.shape)
    return ScheduleOutput(
        alpha_t=torch.where(end, torch.ones_like(s.alpha_t), s.alpha_t),
        sigma_t=torch.where(end, torch.zeros_like(s.sigma_t), s.sigma_t),
        d_alpha_t=s.d_alpha_t,
        d_sigma_t=s.d_sigma_t,
    )


@torch.no_grad()
def progressive_target(
    teacher_x0: DataPrediction,
    schedule: NoiseSchedule,
    x_t: torch.Tensor,
    t: torch.Tensor,
    t_mid: torch.Tensor,
    t_next: torch.Tensor,
) -> torch.Tensor:
    """The student's data-prediction target ``x~`` (B, C, H, W) at ``(x_t, t)``: two teacher DDIM steps
    ``t -> t_mid -> t_next`` (all (B,)), then Salimans & Ho's Alg. 2 inversion (module docstring)."""
    s, s_mid, s_next = (_grid_values(schedule, v, x_t) for v in (t, t_mid, t_next))
    x = x_t.double()
    x_mid = ddim_step(teacher_x0(x_t, t).double(), x, s, s_mid)
    x_next = ddim_step(teacher_x0(x_mid.to(x_t.dtype), t_mid).double(), x_mid, s_mid, s_next)
    ratio = s_next.sigma_t / s.sigma_t  # sigma''/sigma
    target = (x_next - ratio * x) / (s_next.alpha_t - ratio * s.alpha_t)  # Salimans & Ho Alg. 2
    return target.to(x_t.dtype)
