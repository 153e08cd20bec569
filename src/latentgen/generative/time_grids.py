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
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from latentgen.errors import ConfigError
from latentgen.generative.schedules import NoiseSchedule

__all__ = ["SPACINGS", "LeadingSpacing", "LinspaceSpacing", "Spacing", "TrailingSpacing", "resolve_spacing"]


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


SPACINGS: dict[str, Callable[[], Spacing]] = {
    "leading": LeadingSpacing,
    "trailing": TrailingSpacing,
    "linspace": LinspaceSpacing,
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
