"""Stateless samplers: noise at t=1 -> samples at t=0. This module: the interface and what every sampler shares
(the start from an image, latent blending, RePaint resampling); the samplers are in
:mod:`~latentgen.generative.samplers.diffusion` (DDPM, DDIM, ancestral Euler, DPM-Solver++(2M)) and
:mod:`~latentgen.generative.samplers.ode` (Euler, Heun, dopri5).

Every sampler is called as

    sampler(model_fn, param, noise, *, steps=None, generator=None, progress=False, **overrides) -> x0 (B,C,H,W)

- ``model_fn(x_t (B,C,H,W), t (B,) float) -> raw network output`` (guidance = a wrapped model_fn, see
  ``guidance.py``); ``param`` is the model's :class:`~latentgen.generative.parameterization.Parameterization`:
  ``schedule``, ``prediction`` and ``model_outputs`` (learned variance split), e.g.
  ``objective.parameterization`` (samplers never see the training objective).
- ``noise`` is the start sample x_1 (B, C, H, W), drawn by the caller; all further randomness comes from
  ``generator`` (drawn on the generator's device), so a fixed seed gives identical samples.
- Constructor kwargs are the defaults (``steps``, ``spacing``, ``eta``...); per-call kwargs override them
  (unknown keys raise a ConfigError). Nothing is stored between calls.
- ``sampler.sample(...)`` returns :class:`SamplerOutput` (samples and the exact number of network
  evaluations, NFE); ``sampler.nfe(steps)`` gives the NFE of fixed-step samplers in advance.

**Starting from an image** (every sampler; keyword arguments of ``sample``/``__call__``):

- ``init`` (B, C, H, W) clean latents and ``strength`` in [0, 1] (SDEdit, Meng et al. 2022): only the last
  ``int(steps * strength)`` points of the time grid are run (diffusers' img2img rule), starting from
  ``x = alpha(t_0) init + sigma(t_0) noise`` at the first kept time ``t_0``. ``strength=0`` returns ``init``;
  ``strength=1`` is sampling from noise. Dopri5 integrates from ``t = strength``.
- ``mask`` (B, 1 or C, H, W) with 1 = generate, 0 = keep ``init`` (latent blending, as diffusers' inpainting
  pipeline with a plain model and RePaint, Lugmayr et al. 2022, Eq. 8): after every step to ``t`` the known
  region is replaced by ``alpha(t) init + sigma(t) noise`` (the same start noise), so at t=0 it is ``init``
  exactly. ``resample=r`` (fixed-step samplers but DPM-Solver++(2M), whose history a jump would invalidate)
  adds RePaint's resampling (Lugmayr et al. Alg. 1, §4.2) with jump length ``jump=j``: the grid is run in
  chunks of j steps, and each chunk is followed by ``r - 1`` rounds of noising back to its first time with
  q(x_s | x_t) (Lugmayr et al. Eq. 9 on the respaced grid) and running it again. The chunk that ends at t=0
  is run once.

**Time grids** (``spacing``) are in :mod:`latentgen.generative.time_grids`: the network is evaluated at
``t_0 > ... > t_{N-1}`` and the last step lands on ``t_N = 0``.

**ODE samplers** (Euler, Heun, dopri5) integrate the probability-flow ODE ``dx/dt = d_alpha x0_hat +
d_sigma eps_hat`` in ``t``: exact drift for flows (velocity prediction returns it directly). On a
discrete diffusion schedule the drift uses the schedule's piecewise-linear angle interpolation
(``schedules.py``) and the fixed-step ones evaluate the network on grid points only. First-order steps in
the (sigma/alpha) variable are exactly DDIM(eta=0), which is the better first-order choice for VP
diffusion; DPM-Solver++(2M) is the better few-step one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from latentgen.errors import ConfigError
from latentgen.generative.parameterization import Parameterization
from latentgen.generative.schedules import NoiseSchedule, ScheduleOutput
from latentgen.generative.time_grids import resolve_spacing


ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# =============================================================================================
# Shared machinery
# =============================================================================================


@dataclass
class SamplerOutput:
    samples: torch.Tensor  # (B, C, H, W) float32
    nfe: int  # number of model_fn calls


@dataclass
class Start:
    """Where a sampler starts and what it keeps (see the module docstring): ``init`` clean latents
    (B, C, H, W) or None (pure noise), ``strength`` the fraction of the time grid run, ``mask`` 1 = generate,
    0 = keep ``init``, ``resample`` RePaint's rounds per chunk of ``jump`` steps (1 = none)."""

    init: torch.Tensor | None = None
    strength: float = 1.0
    mask: torch.Tensor | None = None
    resample: int = 1
    jump: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.strength) <= 1.0:
            raise ConfigError(f"strength={self.strength} must be in [0, 1]")
        if (self.init is None) and (self.mask is not None or float(self.strength) < 1.0):
            raise ConfigError("strength < 1 and mask need init (the latents of the input image)")
        if int(self.resample) < 1:
            raise ConfigError(f"resample={self.resample} must be >= 1")
        if int(self.resample) > 1 and self.mask is None:
            raise ConfigError("resample > 1 (RePaint) needs a mask")
        if int(self.jump) < 1:
            raise ConfigError(f"jump={self.jump} must be >= 1")


class _Net:
    """Evaluates ``model_fn`` at scalar time ``t`` and converts the output; counts evaluations. Also holds the
    :class:`Start` of the call: the grid truncation, the start from ``init`` and the blending of the known
    region."""

    def __init__(self, model_fn: ModelFn, param: Parameterization, start: Start | None = None) -> None:
        self.model_fn, self.param, self.nfe = model_fn, param, 0
        self.start = start or Start()
        self.noise: torch.Tensor | None = None  # the start noise (set by begin)

    # ---- starting from an image (SDEdit) and keeping a known region (inpainting)
    def truncate(self, grid: torch.Tensor) -> torch.Tensor:
        """The last ``int(steps * strength)`` evaluation times of ``grid`` (steps + 1,) and the final 0."""
        if self.start.init is None or float(self.start.strength) >= 1.0:
            return grid
        steps = grid.numel() - 1
        keep = min(int(steps * float(self.start.strength)), steps)  # diffusers img2img: int(N * strength)
        return grid[steps - keep :]  # (keep + 1,)

    def noised_init(self, t: float, like: torch.Tensor) -> torch.Tensor:
        """alpha(t) init + sigma(t) noise (init exactly at t=0)."""
        init = self.start.init.to(like)
        if t <= 0.0:
            return init
        s = self.schedule_at(t, like)
        return s.alpha_t * init + s.sigma_t * self.noise

    def begin(self, x: torch.Tensor, t0: float) -> torch.Tensor:
        """The sampler's start at its first time ``t0`` from the start noise ``x``."""
        self.noise = x
        if self.start.init is None or (float(self.start.strength) >= 1.0 and self.start.mask is None):
            return x
        if float(self.start.strength) >= 1.0:
            return x  # inpainting from pure noise: the known region enters by blending
        return self.noised_init(t0, x)

    def blend(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """Known region (mask 0) replaced by the init noised to ``t`` (RePaint Eq. 8; diffusers' inpainting
        with a plain model)."""
        if self.start.mask is None:
            return x
        m = self.start.mask.to(x)
        return m * x + (1.0 - m) * self.noised_init(t, x)

    def renoise(
        self, x: torch.Tensor, a: float, s: float, a_p: float, s_p: float, generator: torch.Generator | None
    ) -> torch.Tensor:
        """x at the earlier time (a_p, s_p) -> the later time (a, s) by q(x_t | x_s) (RePaint Eq. 9, respaced):
        x_t = (a / a_p) x_s + sqrt(s^2 - (a / a_p)^2 s_p^2) z."""
        a_ts = a / a_p
        std = math.sqrt(max(s * s - a_ts * a_ts * s_p * s_p, 0.0))
        return a_ts * x + std * randn(x.shape, like=x, generator=generator)

    def steps_with_resampling(self, x, grid, step, generator, progress: bool = False, desc: str = ""):
        """Run ``step(x, i) -> x`` over the grid, blending after each step and, with ``resample = r > 1``,
        running each chunk of ``jump`` steps r times, noised back to its start in between (RePaint)."""
        grid_list = [float(t) for t in grid]
        alpha, sigma = _alpha_sigma(self.param.schedule, grid)
        steps, jump = len(grid_list) - 1, int(self.start.jump)
        for first in _progress(range(0, steps, jump), progress, desc):
            end = min(first + jump, steps)
            rounds = 1 if grid_list[end] == 0.0 else int(self.start.resample)  # no resampling from t = 0
            for r in range(rounds):
                if r > 0:  # back from t_end to t_first
                    x = self.renoise(x, alpha[first], sigma[first], alpha[end], sigma[end], generator)
                for i in range(first, end):
                    x = self.blend(step(x, i), grid_list[i + 1])
        return x

    def schedule_at(self, t: float, x: torch.Tensor) -> ScheduleOutput:
        """ScheduleOutput of 0-dim float32 tensors on x's device (computed in float64)."""
        s = self.param.schedule(torch.tensor(t, dtype=torch.float64))
        return s.map(lambda v: v.to(device=x.device, dtype=torch.float32))

    def __call__(self, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor | None, ScheduleOutput]:
        t_vec = torch.full((x.shape[0],), t, dtype=torch.float32, device=x.device)  # (B,)
        raw = self.model_fn(x, t_vec)
        self.nfe += 1
        pred, v = self.param.model_outputs(raw)
        return pred.float(), (None if v is None else v.float()), self.schedule_at(t, x)

    def x0_eps(self, x: torch.Tensor, t: float):
        pred, v, s = self(x, t)
        x0, eps = self.param.prediction.to_x0_eps(pred, x, s)
        return x0, eps, v, pred, s

    def velocity(self, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(dx/dt, x0_hat) at (x, t)."""
        pred, _, s = self(x, t)
        pr = self.param.prediction
        return pr.velocity(pred, x, s), pr.to_x0_eps(pred, x, s)[0]


def randn(shape, *, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """N(0, I) of ``shape`` drawn on the generator's device (so fixed seeds are device independent),
    returned on ``like``'s device in float32."""
    dev = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=dev, dtype=torch.float32).to(like.device)


def _alpha_sigma(schedule: NoiseSchedule, grid: torch.Tensor) -> tuple[list[float], list[float]]:
    """alpha, sigma at the grid times as float64 Python lists (last entry: t=0 -> (1, 0) exactly)."""
    s = schedule(grid)
    alpha, sigma = s.alpha_t.tolist(), s.sigma_t.tolist()
    alpha[-1], sigma[-1] = 1.0, 0.0
    return alpha, sigma


def _progress(it, enabled: bool, desc: str):
    if not enabled:
        return it
    from tqdm.auto import tqdm  # lazy: only when asked for

    return tqdm(it, desc=desc, leave=False)


class Sampler:
    """Base class. Subclasses set ``self.defaults`` (every overridable option, ``steps`` included) and
    implement ``_run(net, param, x, opts, generator, progress) -> x0``."""

    name = "sampler"
    supports_resampling = True  # RePaint's resampling needs steps without a history

    def __init__(self, **defaults: Any) -> None:
        self.defaults = dict(defaults)

    def _options(self, steps: int | None, overrides: dict[str, Any]) -> dict[str, Any]:
        unknown = set(overrides) - set(self.defaults)
        if unknown:
            raise ConfigError(
                f"{type(self).__name__} got unknown option(s) {sorted(unknown)}; allowed: {sorted(self.defaults)}"
            )
        opts = {**self.defaults, **overrides}
        if steps is not None:
            opts["steps"] = steps
        if "spacing" in opts:
            opts["spacing"] = resolve_spacing(opts["spacing"])
        return opts

    def sample(
        self,
        model_fn: ModelFn,
        param: Parameterization,
        noise: torch.Tensor,
        *,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        init: torch.Tensor | None = None,
        strength: float = 1.0,
        mask: torch.Tensor | None = None,
        resample: int = 1,
        jump: int = 1,
        **overrides: Any,
    ) -> SamplerOutput:
        opts = self._options(steps, overrides)
        start = Start(init=init, strength=float(strength), mask=mask, resample=int(resample), jump=int(jump))
        if start.resample > 1 and not self.supports_resampling:
            raise ConfigError(f"{type(self).__name__} does not support resample > 1 (RePaint)")
        net = _Net(model_fn, param, start)
        x = noise.float()
        with torch.no_grad():
            out = self._run(net, param, x, opts, generator, progress)
        return SamplerOutput(samples=out, nfe=net.nfe)

    def __call__(
        self,
        model_fn: ModelFn,
        param: Parameterization,
        noise: torch.Tensor,
        *,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        **overrides: Any,
    ) -> torch.Tensor:
        """Samples (B, C, H, W) at t=0 from ``noise`` at t=1 (see the module docstring; ``init``,
        ``strength``, ``mask``, ``resample``, ``jump`` pass through to :meth:`sample`)."""
        out = self.sample(model_fn, param, noise, steps=steps, generator=generator, progress=progress, **overrides)
        return out.samples

    def nfe(self, steps: int | None = None) -> int | None:
        """Network evaluations for ``steps`` (default: the configured steps). None if adaptive/unknown."""
        n = self.defaults.get("steps") if steps is None else steps
        return None if n is None else int(n)

    def _run(self, net: _Net, param: Parameterization, x, opts, generator, progress) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.defaults.items())})"


# =============================================================================================
# Ancestral and DDIM
# =============================================================================================


def _posterior(a: float, s: float, a_p: float, s_p: float) -> tuple[float, float, float, float]:
    """q(x_s | x_t, x0) for x_t = a x0 + s eps, x_s = a_p x0 + s_p eps (s < t):
    mean = c_xt x_t + c_x0 x0, variance beta_tilde; also beta = sigma_{t|s}^2 (Ho et al. Eq. 6-7,
    written for any (alpha, sigma) as in Kingma et al. 2021, VDM)."""
    a_ts = a / a_p  # alpha_{t|s}
    var_ts = max(s * s - a_ts * a_ts * s_p * s_p, 0.0)  # sigma_{t|s}^2 = 1 - abar_t/abar_s = beta'_t (VP)
    c_xt = a_ts * s_p * s_p / (s * s)
    c_x0 = a_p * var_ts / (s * s)
    beta_tilde = var_ts * s_p * s_p / (s * s)  # Ho et al. Eq. 7
    return c_xt, c_x0, var_ts, beta_tilde
