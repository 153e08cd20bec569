"""How straight a flow's sampling paths are: the path-length / transport-distance ratio.

A sample path ``x(t)`` from noise ``x(1)`` to data ``x(0)`` has length ``L = int_0^1 |dx/dt| dt`` and transport
distance ``D = |x(0) - x(1)|``; ``L / D >= 1``, with equality exactly when the path is a straight segment
traversed without turning back. A flow whose paths all have ratio 1 is solved exactly by one Euler step (Liu
et al., ICLR 2023, "Flow Straight and Fast", §2.2: straight paths make Euler exact); reflow lowers the ratio.
Both integrals are measured on a fine Euler discretisation of the probability-flow ODE.
"""

from __future__ import annotations

import torch

from latentgen.generative.parameterization import Parameterization

__all__ = ["ode_trajectory", "path_straightness"]


@torch.no_grad()
def ode_trajectory(model_fn, param: Parameterization, noise: torch.Tensor, steps: int = 200) -> torch.Tensor:
    """The Euler path of ``dx/dt = velocity`` from t=1 (``noise``, (B, ...)) to t=0 on a uniform grid of
    ``steps`` steps: (steps + 1, B, ...) with entry 0 the noise and entry ``steps`` the sample."""
    grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    x = noise.float()
    path = [x]
    for i in range(steps):
        t = torch.full((x.shape[0],), float(grid[i]), dtype=torch.float32, device=x.device)  # (B,)
        s = param.schedule(t).reshape_like(x)
        pred, _ = param.model_outputs(model_fn(x, t))
        x = x + float(grid[i + 1] - grid[i]) * param.prediction.velocity(pred.float(), x, s)
        path.append(x)
    return torch.stack(path)  # (steps + 1, B, ...)


def path_straightness(path: torch.Tensor) -> torch.Tensor:
    """Per-sample ratio path length / transport distance (B,) of a path (K + 1, B, ...) (module docstring)."""
    flat = path.flatten(start_dim=2).double()  # (K + 1, B, D)
    length = (flat[1:] - flat[:-1]).norm(dim=-1).sum(dim=0)  # (B,)
    distance = (flat[-1] - flat[0]).norm(dim=-1)  # (B,)
    return length / distance.clamp_min(1e-12)
