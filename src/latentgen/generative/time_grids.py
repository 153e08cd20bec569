"""Time grids ("timestep spacing") of the samplers.

A :class:`Spacing` turns ``steps = N`` into descending times ``t_0 > ... > t_{N-1} > t_N = 0``;
the network is evaluated at ``t_0..t_{N-1}`` and the last step lands on t=0 (alpha=1, sigma=0), i.e. it
returns the model's x0 estimate (DDIM with ``set_alpha_to_one``; the Euler step to sigma=0 of Karras
et al. 2022). For a discrete schedule (T steps) the times are grid points ``t = (k + 1)/T`` with the
indices of diffusers' ``timestep_spacing`` (Lin et al. 2023, Table 2):

- ``leading`` (``LeadingSpacing(steps_offset=1)``): ``k = arange(N) * (T // N) + steps_offset``, reversed.
  ``steps_offset=1`` is LDM's / Stable Diffusion's DDIM grid (981, 961, ..., 1 for N=50). Its first step
  is not at t=1, so the pure-noise start does not match the marginal there. Not defined on continuous paths.
- ``trailing`` (default everywhere): ``k = round(T - i T/N) - 1``: 999, 979, ..., 19. Starts at t=1
  (required with zero-terminal SNR). On a continuous path: ``t_i = 1 - i/N``.
- ``linspace``: ``k = round(linspace(0, T - 1, N))``, reversed: 999, ..., 0 (diffusers' DDIM/DDPM
  "linspace"; its DPMSolverMultistep "linspace" is a different grid). On a continuous path:
  ``linspace(1, t_min, N)`` (default ``t_min = 1/N``, which equals trailing; ``t_min = 1/1000`` is
  diffusers' FlowMatchEulerDiscreteScheduler grid).
- ``karras`` (:class:`KarrasSpacing`, Karras et al. 2022, Eq. 5, rho = 7): the noise levels
  ``sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho`` of the
  variance-exploding variable ``sigma = sigma_t / alpha_t``, turned into times by the schedule's inverse
  log-SNR (``t = lambda^{-1}(-2 log sigma)``). Times are fractional on discrete schedules (the samplers then
  see exactly these sigmas, as diffusers' EulerDiscreteScheduler with ``use_karras_sigmas``). Default
  ``sigma_min``/``sigma_max``: the schedule's sigma at ``t_min`` and at t=1 (for discrete schedules the first
  and last training step); a path with alpha(1) = 0 (rectified flow) needs an explicit ``sigma_max``.
- ``shifted`` (:class:`ShiftedSpacing`, Esser et al. 2024, §5.3.2, SD3): ``t' = s t / (1 + (s - 1) t)`` of
  ``linspace(1, t_min, N)``; shift s > 1 spends more steps at high noise. Meant for flow matching.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from latentgen.errors import ConfigError
from latentgen.generative.schedules import NoiseSchedule

__all__ = [
    "SPACINGS",
    "KarrasSpacing",
    "LeadingSpacing",
    "LinspaceSpacing",
    "ShiftedSpacing",
    "Spacing",
    "TrailingSpacing",
    "resolve_spacing",
]


class Spacing:
    """``grid(schedule, steps) -> (steps + 1,) float64`` descending times, last = 0."""

    def indices(self, num_timesteps: int, steps: int) -> torch.Tensor:
        """Discrete schedules: (steps,) int64 descending indices k in [0, T-1]."""
        raise NotImplementedError

    def continuous(self, steps: int) -> torch.Tensor:
        """Continuous paths: (steps,) float64 descending times in (0, 1]."""
        raise NotImplementedError

    def grid(self, schedule: NoiseSchedule, steps: int) -> torch.Tensor:
        if steps < 1:
            raise ConfigError(f"sampler.steps must be >= 1, got {steps}")
        if schedule.is_discrete:
            T = schedule.num_timesteps
            if steps > T:
                raise ConfigError(f"sampler.steps={steps} exceeds the schedule's {T} timesteps")
            k = self.indices(T, steps)
            if int(k.min()) < 0 or int(k.max()) > T - 1 or not bool((k[1:] < k[:-1]).all()):
                raise ConfigError(
                    f"{self!r} with steps={steps}, T={T} gives an invalid index grid {k.tolist()[:5]}...; "
                    "use another spacing or steps_offset"
                )
            t = (k.double() + 1.0) / T  # t_k = (k + 1)/T
        else:
            t = self.continuous(steps)
        return torch.cat([t, torch.zeros(1, dtype=torch.float64)])  # (steps + 1,)


class LeadingSpacing(Spacing):
    """diffusers "leading": k = arange(N) * (T // N) + steps_offset (LDM DDIM: steps_offset = 1)."""

    def __init__(self, steps_offset: int = 1) -> None:
        self.steps_offset = int(steps_offset)

    def indices(self, num_timesteps, steps):
        ratio = num_timesteps // steps
        return (torch.arange(steps, dtype=torch.int64) * ratio).flip(0) + self.steps_offset

    def continuous(self, steps):
        raise ConfigError("sampler.spacing=leading needs a discrete schedule; use trailing or linspace for flows")

    def __repr__(self) -> str:
        return f"LeadingSpacing(steps_offset={self.steps_offset})"


class TrailingSpacing(Spacing):
    """diffusers "trailing": k = round(T - i T/N) - 1; continuous: t_i = 1 - i/N."""

    def indices(self, num_timesteps, steps):
        i = torch.arange(steps, dtype=torch.float64)
        return torch.round(num_timesteps - i * (num_timesteps / steps)).long() - 1

    def continuous(self, steps):
        return 1.0 - torch.arange(steps, dtype=torch.float64) / steps

    def __repr__(self) -> str:
        return "TrailingSpacing()"


class LinspaceSpacing(Spacing):
    """diffusers DDIM/DDPM "linspace": k = round(linspace(0, T-1, N)) reversed; continuous:
    linspace(1, t_min, N) with t_min = 1/N by default."""

    def __init__(self, t_min: float | None = None) -> None:
        self.t_min = t_min

    def indices(self, num_timesteps, steps):
        return torch.round(torch.linspace(0, num_timesteps - 1, steps, dtype=torch.float64)).long().flip(0)

    def continuous(self, steps):
        t_min = 1.0 / steps if self.t_min is None else float(self.t_min)
        if steps == 1:
            return torch.ones(1, dtype=torch.float64)
        return torch.linspace(1.0, t_min, steps, dtype=torch.float64)

    def __repr__(self) -> str:
        return f"LinspaceSpacing(t_min={self.t_min})"


class KarrasSpacing(Spacing):
    """Karras et al. 2022, Eq. 5: sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho
    in sigma = sigma_t/alpha_t, mapped to t by the schedule's inverse log-SNR (see the module docstring)."""

    def __init__(self, rho: float = 7.0, sigma_min: float | None = None, sigma_max: float | None = None) -> None:
        self.rho = float(rho)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def sigmas(self, schedule: NoiseSchedule, steps: int) -> torch.Tensor:
        """(steps,) float64 descending sigma = sigma_t/alpha_t of Eq. 5."""

        def ve_sigma(t: float) -> float:
            s = schedule(torch.tensor(t, dtype=torch.float64))
            return float(s.sigma_t / s.alpha_t) if float(s.alpha_t) > 0 else float("inf")

        lo = ve_sigma(schedule.t_min) if self.sigma_min is None else float(self.sigma_min)
        hi = ve_sigma(1.0) if self.sigma_max is None else float(self.sigma_max)
        if not (math.isfinite(hi) and 0 < lo < hi):
            raise ConfigError(
                f"KarrasSpacing needs 0 < sigma_min < sigma_max < inf, got ({lo}, {hi}) on {schedule!r}; "
                "set sampler.spacing.sigma_max (and sigma_min) for a path whose alpha reaches 0"
            )
        if steps == 1:
            return torch.tensor([hi], dtype=torch.float64)
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
        inv_rho = 1.0 / self.rho
        return (hi**inv_rho + ramp * (lo**inv_rho - hi**inv_rho)) ** self.rho  # Karras et al. Eq. 5

    def grid(self, schedule: NoiseSchedule, steps: int) -> torch.Tensor:
        if steps < 1:
            raise ConfigError(f"sampler.steps must be >= 1, got {steps}")
        sigma = self.sigmas(schedule, steps)
        t = schedule.t_from_log_snr(-2.0 * torch.log(sigma)).double().clamp(0.0, 1.0)  # lambda = -2 log sigma
        if self.sigma_max is None:
            t[0] = 1.0  # exactly t=1 (the inverse is exact up to rounding)
        return torch.cat([t, torch.zeros(1, dtype=torch.float64)])  # (steps + 1,)

    def __repr__(self) -> str:
        return f"KarrasSpacing(rho={self.rho}, sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"


class ShiftedSpacing(Spacing):
    """SD3's shifted grid (Esser et al. 2024, §5.3.2): t' = s t / (1 + (s - 1) t) of linspace(1, t_min, N).

    ``t_min`` defaults to 1/N; ``t_min = shift(1/1000)`` (``3 / 1002`` for s = 3) reproduces diffusers'
    FlowMatchEulerDiscreteScheduler(shift=s), which shifts its own minimum before shifting the grid.
    Discrete schedules get the same fractional times."""

    def __init__(self, shift: float = 3.0, t_min: float | None = None) -> None:
        if float(shift) <= 0:
            raise ConfigError(f"ShiftedSpacing(shift={shift}) must be > 0")
        self.shift, self.t_min = float(shift), t_min

    def shifted(self, t: torch.Tensor) -> torch.Tensor:
        return self.shift * t / (1.0 + (self.shift - 1.0) * t)

    def grid(self, schedule: NoiseSchedule, steps: int) -> torch.Tensor:
        if steps < 1:
            raise ConfigError(f"sampler.steps must be >= 1, got {steps}")
        t_min = 1.0 / steps if self.t_min is None else float(self.t_min)
        base = (
            torch.ones(1, dtype=torch.float64) if steps == 1 else torch.linspace(1.0, t_min, steps, dtype=torch.float64)
        )
        return torch.cat([self.shifted(base), torch.zeros(1, dtype=torch.float64)])  # (steps + 1,)

    def __repr__(self) -> str:
        return f"ShiftedSpacing(shift={self.shift}, t_min={self.t_min})"


SPACINGS: dict[str, Callable[[], Spacing]] = {
    "leading": LeadingSpacing,
    "trailing": TrailingSpacing,
    "linspace": LinspaceSpacing,
    "karras": KarrasSpacing,
    "shifted": ShiftedSpacing,
}


def resolve_spacing(spacing: str | Spacing) -> Spacing:
    """A Spacing instance is used as is; a name is looked up in :data:`SPACINGS` (leading = steps_offset 1)."""
    if isinstance(spacing, Spacing):
        return spacing
    try:
        return SPACINGS[spacing]()
    except (KeyError, TypeError):
        raise ConfigError(
            f"sampler.spacing={spacing!r} is unknown; use one of {sorted(SPACINGS)} or a Spacing object"
        ) from None
