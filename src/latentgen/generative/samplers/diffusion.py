"""Diffusion samplers on a time grid: ancestral DDPM, DDIM (and ancestral Euler, DDIM with eta = 1) and
DPM-Solver++(2M). The interface and the shared start/blending machinery: :mod:`latentgen.generative.samplers.base`."""

from __future__ import annotations

import math
from typing import Callable

import torch

from latentgen.errors import ConfigError
from latentgen.generative.parameterization import interpolate_log_variance
from latentgen.generative.time_grids import Spacing
from latentgen.generative.samplers.base import Sampler, _alpha_sigma, _posterior, _progress, randn


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
