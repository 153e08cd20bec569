"""Noise schedules / probability paths: ``x_t = alpha_t * x0 + sigma_t * eps``.

Convention (project-wide): ``t`` in [0, 1], t=0 is data, t=1 is noise.

Two families share one interface (:class:`NoiseSchedule`):

- **Discrete-time diffusion** (:class:`DiscreteSchedule` and its factories :class:`LinearSchedule`,
  :class:`ScaledLinearSchedule`, :class:`CosineSchedule`): T betas, index ``k in {0..T-1}`` and
  ``t_k = (k + 1) / T``; ``alpha_{t_k} = sqrt(abar_k)``, ``sigma_{t_k} = sqrt(1 - abar_k)``
  (Ho et al. 2020, Eq. 4). The network receives ``t_k``, so its (x1000) time embedding sees ``k + 1``;
  diffusers' DDPM/DDIM timestep ``k`` is our index ``k`` (``t = (k + 1) / T``).
- **Continuous paths**: :class:`RectifiedFlowPath` (``alpha = 1 - t``, ``sigma = t``; Liu et al. 2023,
  Esser et al. 2024 §2) and :class:`CosinePath` (VP, ``alpha = cos(pi t / 2)``).

**Off-grid policy for discrete schedules.** A discrete schedule is defined on its T grid points only.
Calling it at any other ``t`` *interpolates linearly the angle* ``phi = atan2(sigma, alpha)`` between
the knots ``(0, 0), (t_0, phi_0), ..., (t_{T-1}, phi_{T-1})`` and returns ``alpha = cos(phi)``,
``sigma = sin(phi)``. This

- is exact on the grid (up to float64 rounding),
- keeps ``alpha^2 + sigma^2 = 1`` (variance preserving) everywhere,
- gives ``alpha = 1, sigma = 0`` at t=0 and stays finite for zero-terminal SNR (``phi = pi/2`` at t=1),
  where log-SNR interpolation would be infinite,
- has piecewise-constant ``d phi / dt``; ``d_alpha = -sin(phi) phi'``, ``d_sigma = cos(phi) phi'``
  use the slope of the segment ``(t_{j-1}, t_j]`` that contains ``t`` (the one *below* a knot, i.e. the
  one-sided derivative in the direction of sampling, t decreasing). A ``t`` within 1e-3/T of a grid
  point is snapped to it, so float32 grid times give the exact table values and the same segment.

The samplers evaluate a discrete-schedule network on grid points only (their time grids are made of
grid points; see ``samplers/base.py``); only the adaptive ODE solver uses the interpolation in between.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from latentgen.errors import ConfigError

__all__ = [
    "ScheduleOutput",
    "NoiseSchedule",
    "DiscreteSchedule",
    "LinearSchedule",
    "ScaledLinearSchedule",
    "CosineSchedule",
    "RectifiedFlowPath",
    "CosinePath",
    "rescale_zero_terminal_snr",
]


@dataclass
class ScheduleOutput:
    """``alpha_t, sigma_t`` and their time derivatives, all of the same (broadcastable) shape."""

    alpha_t: torch.Tensor
    sigma_t: torch.Tensor
    d_alpha_t: torch.Tensor
    d_sigma_t: torch.Tensor

    def map(self, fn) -> ScheduleOutput:
        return ScheduleOutput(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def reshape_like(self, x: torch.Tensor) -> ScheduleOutput:
        """(B,) fields -> (B, 1, ..., 1) so that they broadcast against ``x`` (B, C, H, W)."""
        shape = (-1,) + (1,) * (x.ndim - 1)
        return self.map(lambda v: v.reshape(shape))

    def to(self, dtype: torch.dtype) -> ScheduleOutput:
        return self.map(lambda v: v.to(dtype))

    @property
    def snr(self) -> torch.Tensor:
        """alpha^2 / sigma^2 (inf where sigma = 0)."""
        return self.alpha_t**2 / self.sigma_t**2


class NoiseSchedule:
    """Base class. ``schedule(t) -> ScheduleOutput``; ``t`` is a float tensor of any shape.

    Attributes:
        is_discrete: True for T-step diffusion schedules (index/grid helpers available).
        t_min: the smallest ``t`` at which the network is ever evaluated (1/T for discrete, 0 otherwise).
        t_max: the largest (1 for every schedule here).
    """

    is_discrete: bool = False
    t_min: float = 0.0
    t_max: float = 1.0

    def __call__(self, t: torch.Tensor) -> ScheduleOutput:
        raise NotImplementedError

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        s = self(t)
        return s.alpha_t**2 / s.sigma_t**2

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) = 2 (log alpha - log sigma) (Kingma et al. 2021; Lu et al. 2022 use lambda/2)."""
        s = self(t)
        return 2.0 * (torch.log(s.alpha_t) - torch.log(s.sigma_t))

    def t_from_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no closed-form inverse of log-SNR")


# ---------------------------------------------------------------------------------------------
# Discrete-time diffusion
# ---------------------------------------------------------------------------------------------


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023, Alg. 1: shift sqrt(abar) so that it is 0 at T, rescale so abar_0 is unchanged."""
    sqrt_abar = torch.cumprod(1.0 - betas, dim=0).sqrt()  # (T,)
    s0, s_last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    sqrt_abar = (sqrt_abar - s_last) * (s0 / (s0 - s_last))  # shift then scale
    abar = sqrt_abar**2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])  # per-step alpha_k = abar_k / abar_{k-1}
    return 1.0 - alphas  # last beta is exactly 1


class DiscreteSchedule(NoiseSchedule):
    """T-step variance-preserving diffusion defined by its betas (Ho et al. 2020).

    Args:
        betas: (T,) sequence of per-step variances in (0, 1].
        zero_terminal_snr: rescale to ``abar_{T-1} = 0`` (Lin et al. 2023, Alg. 1). Pair with v- (or x0-)
            prediction and "trailing" sampler spacing; eps-prediction cannot recover x0 at t=1.

    Tables (float64, CPU; moved to the query's device on use):
        betas (T,), alphas_cumprod (T,) = abar_k, alphas_cumprod_prev (T,) = abar_{k-1} (abar_{-1} = 1),
        beta_tilde (T,) posterior variance (Ho et al. Eq. 7; beta_tilde_0 = 0).
    """

    is_discrete = True
    _SNAP = 1e-3  # in index units; see _phi

    def __init__(self, betas, zero_terminal_snr: bool = False) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 2 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ConfigError("schedule betas must be a sequence of >= 2 values in (0, 1]")
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        self.zero_terminal_snr = bool(zero_terminal_snr)
        self.betas = betas  # (T,)
        self.num_timesteps = T = betas.numel()
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # (T,) abar_k
        if zero_terminal_snr:
            self.alphas_cumprod[-1] = 0.0  # exact zero (cumprod of 1 - 1 already is; guard rounding)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        # Ho et al. Eq. 7: beta_tilde_k = (1 - abar_{k-1}) / (1 - abar_k) * beta_k
        self.beta_tilde = (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod) * betas  # (T,)
        self.t_min = 1.0 / T
        self.t_max = 1.0
        # Interpolation knots of the angle phi = atan2(sigma, alpha) at t = 0, t_0, ..., t_{T-1}.
        phi = torch.atan2((1.0 - self.alphas_cumprod).clamp_min(0).sqrt(), self.alphas_cumprod.sqrt())
        self._knots_t = torch.arange(T + 1, dtype=torch.float64) / T  # (T+1,), knot j at t = j/T
        self._knots_phi = torch.cat([torch.zeros(1, dtype=torch.float64), phi])  # (T+1,)
        if not bool((self._knots_phi[1:] > self._knots_phi[:-1]).all()):
            raise ConfigError("schedule betas give a non-monotone SNR; every beta must be > 0")
        self._slopes = (self._knots_phi[1:] - self._knots_phi[:-1]) * T  # (T,) d phi / dt per segment
        self._cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    # --- grid helpers ---
    def index_to_t(self, k: torch.Tensor) -> torch.Tensor:
        """k in {0..T-1} -> t_k = (k + 1) / T (float32 unless k is float64)."""
        dtype = torch.float64 if k.dtype == torch.float64 else torch.float32
        return (k.to(dtype) + 1.0) / self.num_timesteps

    def t_to_index(self, t: torch.Tensor) -> torch.Tensor:
        """t -> nearest grid index k = round(t T) - 1, clamped to [0, T-1] (int64)."""
        k = torch.round(t.double() * self.num_timesteps).long() - 1
        return k.clamp(0, self.num_timesteps - 1)

    def _tables(self, device: torch.device):
        if device not in self._cache:
            self._cache[device] = (self._knots_t.to(device), self._knots_phi.to(device), self._slopes.to(device))
        return self._cache[device]

    def _phi(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """phi(t) and d phi/dt (float64) by piecewise-linear interpolation (see module docstring).

        A ``t`` within ``_SNAP / T`` of a grid point is that grid point (so float32 ``t_k`` gives the exact
        table value and the derivative of the segment below it, whatever the rounding).
        """
        _, knots_phi, slopes = self._tables(t.device)
        T = self.num_timesteps
        u = t.double().clamp(0.0, 1.0) * T  # position in index units: knot j sits at u = j
        r = torch.round(u)
        on_knot = (u - r).abs() < self._SNAP
        u = torch.where(on_knot, r, u)
        seg = torch.where(on_knot, r - 1, torch.floor(u)).clamp(0, T - 1).long()  # segment (seg, seg+1]
        phi = knots_phi[seg] + (u - seg) * (knots_phi[seg + 1] - knots_phi[seg])
        return phi, slopes[seg]

    def __call__(self, t: torch.Tensor) -> ScheduleOutput:
        t = torch.as_tensor(t)
        out_dtype = t.dtype if t.is_floating_point() else torch.float32
        phi, dphi = self._phi(t)
        s = ScheduleOutput(
            alpha_t=torch.cos(phi),
            sigma_t=torch.sin(phi),
            d_alpha_t=-torch.sin(phi) * dphi,
            d_sigma_t=torch.cos(phi) * dphi,
        )
        return s.to(out_dtype)

    def t_from_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        """Inverse of the interpolated log-SNR (exact on the grid). tan(phi) = sigma/alpha = exp(-lambda/2)."""
        knots_t, knots_phi, slopes = self._tables(log_snr.device)
        phi = torch.atan(torch.exp(-0.5 * log_snr.double()))
        j = (torch.searchsorted(knots_phi, phi.reshape(-1), right=False) - 1).clamp(0, self.num_timesteps - 1)
        j = j.reshape(phi.shape)
        t = knots_t[j] + (phi - knots_phi[j]) / slopes[j]
        return t.to(log_snr.dtype if log_snr.is_floating_point() else torch.float32)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(T={self.num_timesteps}, zero_terminal_snr={self.zero_terminal_snr})"


class LinearSchedule(DiscreteSchedule):
    """ADM/DiT "linear": betas = linspace(beta_start, beta_end, T) (Ho et al. 2020, §4)."""

    def __init__(
        self,
        num_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        zero_terminal_snr: bool = False,
    ) -> None:
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        super().__init__(betas, zero_terminal_snr=zero_terminal_snr)


class ScaledLinearSchedule(DiscreteSchedule):
    """LDM "linear" (scaled-linear): betas = linspace(sqrt(b0), sqrt(b1), T)^2 (Rombach et al. 2022).

    (0.0015, 0.0195) for most LDMs, (0.00085, 0.012) for Stable Diffusion.
    """

    def __init__(
        self,
        num_timesteps: int = 1000,
        beta_start: float = 0.0015,
        beta_end: float = 0.0195,
        zero_terminal_snr: bool = False,
    ) -> None:
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
        super().__init__(betas, zero_terminal_snr=zero_terminal_snr)


class CosineSchedule(DiscreteSchedule):
    """Nichol & Dhariwal 2021, Eq. 17: abar(t) = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s) * pi/2).

    betas_k = min(1 - abar((k+1)/T) / abar(k/T), max_beta) (Eq. 17 and the clipping of §3.2).
    """

    def __init__(
        self,
        num_timesteps: int = 1000,
        s: float = 0.008,
        max_beta: float = 0.999,
        zero_terminal_snr: bool = False,
    ) -> None:
        def f(u: torch.Tensor) -> torch.Tensor:
            return torch.cos((u + s) / (1.0 + s) * math.pi / 2) ** 2

        u = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps  # (T+1,)
        betas = (1.0 - f(u[1:]) / f(u[:-1])).clamp(max=max_beta)  # (T,)
        super().__init__(betas, zero_terminal_snr=zero_terminal_snr)


# ---------------------------------------------------------------------------------------------
# Continuous paths
# ---------------------------------------------------------------------------------------------


def _as_float(t) -> torch.Tensor:
    t = torch.as_tensor(t)
    return t if t.is_floating_point() else t.float()


class RectifiedFlowPath(NoiseSchedule):
    """Rectified flow / linear interpolation: alpha = 1 - t, sigma = t (Esser et al. 2024, §2 with
    a_t = 1 - t, b_t = t); the velocity target is d_alpha x0 + d_sigma eps = eps - x0."""

    def __call__(self, t: torch.Tensor) -> ScheduleOutput:
        t = _as_float(t)
        one = torch.ones_like(t)
        return ScheduleOutput(alpha_t=1.0 - t, sigma_t=t.clone(), d_alpha_t=-one, d_sigma_t=one)

    def t_from_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        # sigma/alpha = t/(1-t) = exp(-lambda/2)  =>  t = sigmoid(-lambda/2)
        return torch.sigmoid(-0.5 * _as_float(log_snr))

    def __repr__(self) -> str:
        return "RectifiedFlowPath()"


class CosinePath(NoiseSchedule):
    """Continuous VP cosine path: alpha = cos(pi t / 2), sigma = sin(pi t / 2) (no offset; alpha(1) = 0).
    Computed in float64 so that alpha(1) >= 0 after rounding."""

    def __call__(self, t: torch.Tensor) -> ScheduleOutput:
        t = _as_float(t)
        a = t.double() * (math.pi / 2)
        s = ScheduleOutput(
            alpha_t=torch.cos(a),
            sigma_t=torch.sin(a),
            d_alpha_t=-(math.pi / 2) * torch.sin(a),
            d_sigma_t=(math.pi / 2) * torch.cos(a),
        )
        return s.to(t.dtype)

    def t_from_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        return torch.atan(torch.exp(-0.5 * _as_float(log_snr))) * (2 / math.pi)

    def __repr__(self) -> str:
        return "CosinePath()"
