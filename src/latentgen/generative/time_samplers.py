"""Training-time distributions of ``t`` in [0, 1] (t=0 data, t=1 noise).

``sample(batch_size, device, generator=None) -> (B,) float32`` on ``device``. Randomness comes only from
``generator`` (drawn on the generator's own device, then moved), so a fixed generator gives the same
times on every device.

The continuous samplers take a resolution ``shift`` (Esser et al. 2024, §5.3.2, resolution-dependent shifting):
``t' = shift t / (1 + (shift - 1) t)``; shift > 1 moves mass towards noise (t -> 1). It maps 0 -> 0,
1 -> 1 and is monotone for shift > 0.
"""

from __future__ import annotations

import torch

from latentgen.errors import ConfigError

__all__ = ["TimeSampler", "UniformDiscreteTime", "UniformTime", "LogitNormalTime", "shift_time"]


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3 resolution shift (Esser et al. 2024, §5.3.2)."""
    if shift == 1.0:
        return t
    return shift * t / (1.0 + (shift - 1.0) * t)


def _draw_device(device, generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device(device)


class TimeSampler:
    """Base class. ``is_discrete`` samplers return grid times t_k = (k + 1)/T only."""

    is_discrete: bool = False

    def sample(self, batch_size: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError


class UniformDiscreteTime(TimeSampler):
    """k ~ U{0..T-1}, returns t_k = (k + 1)/T (Ho et al. 2020, Alg. 1)."""

    is_discrete = True

    def __init__(self, num_timesteps: int = 1000) -> None:
        if num_timesteps < 1:
            raise ConfigError(f"time_sampler.num_timesteps must be >= 1, got {num_timesteps}")
        self.num_timesteps = int(num_timesteps)

    def sample(self, batch_size, device, generator=None):
        dev = _draw_device(device, generator)
        k = torch.randint(0, self.num_timesteps, (batch_size,), generator=generator, device=dev)
        return ((k.float() + 1.0) / self.num_timesteps).to(device)  # (B,)


class UniformTime(TimeSampler):
    """t ~ U(t_min, t_max), then the resolution shift."""

    def __init__(self, t_min: float = 0.0, t_max: float = 1.0, shift: float = 1.0) -> None:
        if not 0.0 <= t_min < t_max <= 1.0:
            raise ConfigError(f"time_sampler: need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
        if shift <= 0:
            raise ConfigError(f"time_sampler.shift must be > 0, got {shift}")
        self.t_min, self.t_max, self.shift = float(t_min), float(t_max), float(shift)

    def sample(self, batch_size, device, generator=None):
        u = torch.rand(batch_size, generator=generator, device=_draw_device(device, generator))
        t = self.t_min + (self.t_max - self.t_min) * u
        return shift_time(t, self.shift).to(device)  # (B,)


class LogitNormalTime(TimeSampler):
    """t = sigmoid(n), n ~ N(mean, std^2) (Esser et al. 2024, §3.1, logit-normal sampling), then the shift."""

    def __init__(self, mean: float = 0.0, std: float = 1.0, shift: float = 1.0) -> None:
        if std <= 0 or shift <= 0:
            raise ConfigError(f"time_sampler: std and shift must be > 0, got std={std}, shift={shift}")
        self.mean, self.std, self.shift = float(mean), float(std), float(shift)

    def sample(self, batch_size, device, generator=None):
        n = torch.randn(batch_size, generator=generator, device=_draw_device(device, generator))
        t = torch.sigmoid(self.mean + self.std * n)
        return shift_time(t, self.shift).to(device)  # (B,)
