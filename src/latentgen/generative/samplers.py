"""Stateless samplers: noise at t=1 -> samples at t=0.

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
from latentgen.generative.parameterization import Parameterization, interpolate_log_variance
from latentgen.generative.schedules import NoiseSchedule, ScheduleOutput
from latentgen.generative.time_grids import Spacing, resolve_spacing

__all__ = [
    "SamplerOutput",
    "Sampler",
    "DDPMSampler",
    "DDIMSampler",
    "EulerAncestralSampler",
    "EulerSampler",
    "HeunSampler",
    "Dopri5Sampler",
    "DPMSolverPP2MSampler",
]

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


class DDPMSampler(Sampler):
    """Ancestral sampling (Ho et al. 2020, Alg. 2), on any (respaced) grid (Nichol & Dhariwal 2021, App. B:
    respaced betas ``beta'_i = 1 - abar_{k_i}/abar_{k_{i+1}}``).

    Variance: the learned one when ``param.learn_variance`` (iDDPM Eq. 15 on the respaced betas),
    otherwise ``variance="small"`` (beta_tilde) or ``"large"`` (beta). No noise is added on the last step.

    Args:
        steps: None = every training timestep (T); else a strided grid from ``spacing``.
        spacing: "trailing" (default), "leading", "linspace" or a Spacing.
        variance: "small" | "large" (fixed-variance choice, Ho et al. §3.2).
    """

    name = "ddpm"
    # fixed-variance choice (Ho et al. §3.2): (beta, beta_tilde) -> variance
    _VARIANCES: dict[str, Callable[[float, float], float]] = {
        "small": lambda beta, beta_tilde: beta_tilde,
        "large": lambda beta, beta_tilde: beta,
    }

    def __init__(self, steps: int | None = None, spacing: str | Spacing = "trailing", variance: str = "small") -> None:
        if variance not in self._VARIANCES:
            raise ConfigError(f"sampler.variance={variance!r}; use one of {sorted(self._VARIANCES)}")
        super().__init__(steps=steps, spacing=spacing, variance=variance)

    def _run(self, net, param, x, opts, generator, progress):
        sched = param.schedule
        steps = opts["steps"]
        if steps is None:
            if not sched.is_discrete:
                raise ConfigError("DDPMSampler on a continuous path needs sampler.steps")
            steps = sched.num_timesteps
        grid = net.truncate(opts["spacing"].grid(sched, steps))
        alpha, sigma = _alpha_sigma(sched, grid)
        if opts["variance"] not in self._VARIANCES:
            raise ConfigError(f"sampler.variance={opts['variance']!r}; use one of {sorted(self._VARIANCES)}")
        fixed_variance = self._VARIANCES[opts["variance"]]
        last = grid.numel() - 2

        def step(x: torch.Tensor, i: int) -> torch.Tensor:
            x0, _, v, _, _ = net.x0_eps(x, float(grid[i]))
            c_xt, c_x0, var_large, var_small = _posterior(alpha[i], sigma[i], alpha[i + 1], sigma[i + 1])
            mean = c_xt * x + c_x0 * x0  # Ho et al. Eq. 7 (posterior mean with x0_hat)
            if i == last:
                return mean  # last step (to t=0): c_xt = 0, mean = x0_hat, no noise
            z = randn(x.shape, like=x, generator=generator)
            if v is not None:
                logvar = interpolate_log_variance(v, math.log(var_large), math.log(var_small))  # iDDPM Eq. 15
                return mean + torch.exp(0.5 * logvar) * z
            return mean + math.sqrt(fixed_variance(var_large, var_small)) * z

        x = net.begin(x, float(grid[0]))
        return net.steps_with_resampling(x, grid, step, generator, progress, "ddpm")


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021, Eq. 12) with sigma_t(eta) of Eq. 16, for any (alpha, sigma):

        x_prev = alpha' x0_hat + sqrt(sigma'^2 - c^2) eps_hat + c z,
        c = eta * sigma' * sqrt(1 - SNR_t/SNR_prev)    (VP: eta sqrt((1-abar')/(1-abar) (1 - abar/abar')))

    eta=0 is deterministic (the first-order exponential integrator of the PF-ODE; on rectified flow it is
    exactly Euler), eta=1 is ancestral sampling with the posterior variance.

    Args:
        steps: number of model evaluations (default 50).
        eta: noise scale.
        spacing: default "trailing" (starts at t=1; needed for zero-terminal SNR, Lin et al. 2023 §3.3).
            Use ``{_target_: ...LeadingSpacing, steps_offset: 1}`` / "leading" to reproduce LDM's grid.
    """

    name = "ddim"

    def __init__(self, steps: int = 50, eta: float = 0.0, spacing: str | Spacing = "trailing") -> None:
        super().__init__(steps=steps, eta=eta, spacing=spacing)

    def _run(self, net, param, x, opts, generator, progress):
        steps, eta = int(opts["steps"]), float(opts["eta"])
        grid = net.truncate(opts["spacing"].grid(param.schedule, steps))
        alpha, sigma = _alpha_sigma(param.schedule, grid)

        def step(x: torch.Tensor, i: int) -> torch.Tensor:
            x0, eps, _, _, _ = net.x0_eps(x, float(grid[i]))
            a, s, a_p, s_p = alpha[i], sigma[i], alpha[i + 1], sigma[i + 1]
            snr_ratio = (a * s_p) ** 2 / ((a_p * s) ** 2)  # SNR_t / SNR_prev in [0, 1]
            c = eta * s_p * math.sqrt(max(1.0 - snr_ratio, 0.0))  # Song et al. Eq. 16
            x = a_p * x0 + math.sqrt(max(s_p * s_p - c * c, 0.0)) * eps  # Eq. 12, "direction pointing to x_t"
            if c > 0:
                x = x + c * randn(x.shape, like=x, generator=generator)
            return x

        x = net.begin(x, float(grid[0]))
        return net.steps_with_resampling(x, grid, step, generator, progress, self.name)


class EulerAncestralSampler(DDIMSampler):
    """Ancestral Euler (k-diffusion's ``sample_euler_ancestral``, diffusers' EulerAncestralDiscreteScheduler)
    in the variable x/alpha with sigma = sigma_t/alpha_t: with sigma_up = sqrt(s'^2 (s^2 - s'^2) / s^2) and
    sigma_down = sqrt(s'^2 - sigma_up^2), an Euler step to sigma_down along d = (x - x0_hat)/sigma, then
    fresh noise of std sigma_up.

    Written out, x' = x0_hat + (sigma_down/sigma)(x - x0_hat) + sigma_up z = x0_hat + sigma_down eps_hat
    + sigma_up z, and sigma_down = s'^2/s, sigma_up = s' sqrt(1 - s'^2/s^2): this is DDIM's update (Song et
    al. Eq. 12 with Eq. 16) at eta = 1, which is how it is computed here (also where alpha = 0 at t = 1).
    ``eta`` < 1 scales the injected noise as k-diffusion's ``eta`` does (the same as DDIM's eta). Use
    ``spacing=karras`` for the k-diffusion setting.
    """

    name = "euler_ancestral"

    def __init__(self, steps: int = 50, eta: float = 1.0, spacing: str | Spacing = "trailing") -> None:
        super().__init__(steps=steps, eta=eta, spacing=spacing)


# =============================================================================================
# Probability-flow ODE in t
# =============================================================================================


class EulerSampler(Sampler):
    """Euler on dx/dt = velocity from t=1 to t=0; the last step returns x0_hat (for rectified flow this *is*
    the Euler step to t=0). NFE = steps."""

    name = "euler"

    def __init__(self, steps: int = 50, spacing: str | Spacing = "trailing") -> None:
        super().__init__(steps=steps, spacing=spacing)

    def _run(self, net, param, x, opts, generator, progress):
        grid_t = net.truncate(opts["spacing"].grid(param.schedule, int(opts["steps"])))
        grid, last = grid_t.tolist(), grid_t.numel() - 2

        def step(x: torch.Tensor, i: int) -> torch.Tensor:
            d, x0 = net.velocity(x, grid[i])
            return x0 if i == last else x + (grid[i + 1] - grid[i]) * d

        x = net.begin(x, grid[0])
        return net.steps_with_resampling(x, grid_t, step, generator, progress, "euler")


class HeunSampler(Sampler):
    """Heun (Karras et al. 2022, Alg. 1, deterministic) on dx/dt in t; the last step (to t=0) is Euler,
    i.e. x0_hat. NFE = 2 steps - 1."""

    name = "heun"

    def __init__(self, steps: int = 25, spacing: str | Spacing = "trailing") -> None:
        super().__init__(steps=steps, spacing=spacing)

    def nfe(self, steps=None):
        n = super().nfe(steps)
        return None if n is None else 2 * n - 1

    def _run(self, net, param, x, opts, generator, progress):
        grid_t = net.truncate(opts["spacing"].grid(param.schedule, int(opts["steps"])))
        grid, last = grid_t.tolist(), grid_t.numel() - 2

        def step(x: torch.Tensor, i: int) -> torch.Tensor:
            d, x0 = net.velocity(x, grid[i])
            if i == last:
                return x0
            h = grid[i + 1] - grid[i]
            x_e = x + h * d  # Euler predictor
            d_e, _ = net.velocity(x_e, grid[i + 1])
            return x + h * 0.5 * (d + d_e)  # trapezoidal corrector

        x = net.begin(x, grid[0])
        return net.steps_with_resampling(x, grid_t, step, generator, progress, "heun")


class Dopri5Sampler(Sampler):
    """Adaptive Dormand-Prince 5(4) (torchdiffeq) on dx/dt from t=1 to ``max(t_end, schedule.t_min)``, then
    x0_hat there (skipped where sigma = 0). NFE is adaptive: read ``SamplerOutput.nfe``.

    On a continuous path with t_end = 0 the network is evaluated at t=0 (sigma=0): use velocity or v
    prediction there (eps/x0 conversions divide by alpha/sigma), or set t_end > 0.
    """

    name = "dopri5"
    supports_resampling = False

    def __init__(self, atol: float = 1e-5, rtol: float = 1e-5, t_end: float = 0.0) -> None:
        super().__init__(atol=atol, rtol=rtol, t_end=t_end)

    def nfe(self, steps=None):
        return None

    def _run(self, net, param, x, opts, generator, progress):
        from torchdiffeq import odeint  # lazy: only needed here

        sched = param.schedule
        t_lo = max(float(opts["t_end"]), sched.t_min)
        if net.start.mask is not None:
            raise ConfigError("Dopri5Sampler cannot blend a mask inside its adaptive steps: use a fixed-step sampler")
        t_hi = 1.0 if net.start.init is None else float(net.start.strength)  # SDEdit: start at t = strength
        if t_hi <= t_lo:
            return net.start.init.to(x) if net.start.init is not None else x
        x = net.begin(x, t_hi)

        def drift(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return net.velocity(y, float(t))[0]

        ts = torch.tensor([t_hi, t_lo], dtype=torch.float32, device=x.device)
        x = odeint(drift, x, ts, method="dopri5", atol=float(opts["atol"]), rtol=float(opts["rtol"]))[-1]
        if float(sched(torch.tensor(t_lo, dtype=torch.float64)).sigma_t) > 0:
            x = net.x0_eps(x, t_lo)[0]
        return x


class DPMSolverPP2MSampler(Sampler):
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2), data prediction, multistep, in lambda = log(alpha/sigma):

        h_i = lambda_i - lambda_{i-1},  r_i = h_{i-1}/h_i
        D_i = (1 + 1/(2 r_i)) x0_{i-1} - 1/(2 r_i) x0_{i-2}     (first step: D = x0_{i-1})
        x_i = (sigma_i/sigma_{i-1}) x_{i-1} - alpha_i (e^{-h_i} - 1) D_i

    First-order on the first step and on the last step (to sigma=0, where it returns x0_hat, as diffusers
    with ``final_sigmas_type="zero"``). Valid for any (alpha, sigma) path, including rectified flow and
    alpha(1)=0 (then e^{-h} = 0 and the next step falls back to first order). NFE = steps.
    """

    name = "dpmpp_2m"
    supports_resampling = False  # its multistep history would not survive a jump back in time

    def __init__(self, steps: int = 20, spacing: str | Spacing = "trailing") -> None:
        super().__init__(steps=steps, spacing=spacing)

    def _run(self, net, param, x, opts, generator, progress):
        grid = net.truncate(opts["spacing"].grid(param.schedule, int(opts["steps"])))
        steps = grid.numel() - 1
        alpha, sigma = _alpha_sigma(param.schedule, grid)
        a_t, s_t = torch.tensor(alpha, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64)
        lam = (torch.log(a_t) - torch.log(s_t)).tolist()  # -inf at alpha=0, +inf at sigma=0
        x0_prev, h_prev = None, None
        x = net.begin(x, float(grid[0]))
        for i in _progress(range(steps), progress, "dpm-solver++(2m)"):
            x0, _, _, _, _ = net.x0_eps(x, float(grid[i]))
            a, s, a_n, s_n = alpha[i], sigma[i], alpha[i + 1], sigma[i + 1]
            if s_n == 0.0:
                x = net.blend(x0, 0.0)  # final first-order step to sigma=0: e^{-h} = 0, alpha = 1
                break
            h = lam[i + 1] - lam[i]
            exp_mh = (a * s_n) / (s * a_n)  # e^{-h}, exact 0 when alpha_i = 0
            if x0_prev is None or not math.isfinite(h_prev):
                d = x0  # first order (DPM-Solver++(1) = DDIM)
            else:
                r = h_prev / h
                d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * x0_prev  # Lu et al. Alg. 2: 2nd-order multistep combination
            x = (s_n / s) * x - a_n * (exp_mh - 1.0) * d  # Lu et al. Alg. 2: exponential-integrator update
            x = net.blend(x, float(grid[i + 1]))
            x0_prev, h_prev = x0, h
        return x
