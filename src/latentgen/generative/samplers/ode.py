"""Probability-flow ODE samplers integrated in t: Euler, Heun (fixed grids) and adaptive dopri5. The interface and the
shared start/blending machinery: :mod:`latentgen.generative.samplers.base`."""

from __future__ import annotations


import torch

from latentgen.errors import ConfigError
from latentgen.generative.time_grids import Spacing
from latentgen.generative.samplers.base import Sampler


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
