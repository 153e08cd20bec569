"""latentgen's schedule, prediction and sampler -> the config of the diffusers scheduler that samples the same.

Discrete schedules (T betas) map to ``DDPMScheduler`` / ``DDIMScheduler`` / ``DPMSolverMultistepScheduler`` with the
same betas (a named ``beta_schedule`` where diffusers' formula gives them, ``trained_betas`` otherwise), the same
``prediction_type`` and the sampler's ``timestep_spacing``; diffusers' timestep ``k`` is latentgen's index ``k``
(``t = (k + 1) / T``; the exported UNet folds the ``+1``, see ``diffusers_unet``). The rectified-flow path maps to
``FlowMatchEulerDiscreteScheduler`` (``sigma = t``, timestep ``1000 sigma``).

Which latentgen sampler equals which diffusers step (same grid, same update, same noise draws from one generator):

- ``DDPMSampler(variance=small)`` = ``DDPMScheduler(variance_type="fixed_small")`` (Ho et al. 2020, Eq. 7 posterior
  on the respaced betas; both add no noise on the step to t=0).
- ``DDIMSampler(eta)`` = ``DDIMScheduler(set_alpha_to_one=True)`` with ``step(..., eta=eta)``, for step counts that
  divide T (diffusers steps from ``k`` to ``k - T // N``).
- ``EulerSampler`` on rectified flow = ``FlowMatchEulerDiscreteScheduler``; diffusers' default grid is latentgen's
  ``LinspaceSpacing(t_min=1/1000)``, latentgen's default ``trailing`` grid is ``set_timesteps(sigmas=1 - i/N)``.
- ``DPMSolverPP2MSampler`` -> ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
  final_sigmas_type="zero")``.

Refused: learned variance (``objective.learn_variance``), the continuous cosine path, DDPM's ``variance=large``
(diffusers adds noise on the last step), and schedules whose T is not 1000 (the time embedding, see
``diffusers_unet``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from latentgen.errors import ConfigError
from latentgen.generative.parameterization import Parameterization
from latentgen.generative.predictions import EpsPrediction, VelocityPrediction, VPrediction, X0Prediction
from latentgen.generative.samplers import DDPMSampler, DPMSolverPP2MSampler, Sampler
from latentgen.generative.schedules import DiscreteSchedule, RectifiedFlowPath
from latentgen.generative.time_grids import LeadingSpacing, LinspaceSpacing, TrailingSpacing, resolve_spacing

__all__ = ["SCHEDULERS", "default_scheduler", "diffusers_scheduler_config", "time_shift"]

# export option `scheduler=` -> diffusers class
SCHEDULERS = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "flow_euler": "FlowMatchEulerDiscreteScheduler",
}
_PREDICTIONS = {EpsPrediction: "epsilon", VPrediction: "v_prediction", X0Prediction: "sample"}


def time_shift(param: Parameterization) -> float:
    """Index units between diffusers' timestep and latentgen's ``1000 t`` (see ``diffusers_unet``)."""
    sched = param.schedule
    if isinstance(sched, DiscreteSchedule):
        if sched.num_timesteps != 1000:
            raise ConfigError(
                f"export: schedule.num_timesteps={sched.num_timesteps}: latentgen's time embedding sees "
                f"1000 (k + 1) / {sched.num_timesteps}, which is not diffusers' timestep k plus a constant; "
                "only T = 1000 exports"
            )
        return 1.0
    if isinstance(sched, RectifiedFlowPath):
        return 0.0
    raise ConfigError(f"export: schedule {sched!r} has no diffusers scheduler (discrete schedules and rectified flow)")


def _named_betas(betas: torch.Tensor) -> dict[str, Any]:
    """diffusers' ``beta_schedule`` (+ start/end) that reproduces ``betas`` to float32, else ``trained_betas``."""
    T, b0, b1 = betas.numel(), float(betas[0]), float(betas[-1])
    candidates = {
        "linear": torch.linspace(b0, b1, T, dtype=torch.float64),
        "scaled_linear": torch.linspace(b0**0.5, b1**0.5, T, dtype=torch.float64) ** 2,
    }
    u = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    candidates["squaredcos_cap_v2"] = (1.0 - f[1:] / f[:-1]).clamp(max=0.999)
    for name, cand in candidates.items():
        if torch.allclose(cand, betas, rtol=1e-9, atol=0.0):
            return {"beta_schedule": name, "beta_start": b0, "beta_end": b1, "trained_betas": None}
    return {"beta_schedule": "linear", "beta_start": b0, "beta_end": b1, "trained_betas": betas.tolist()}


def _spacing(sampler: Sampler) -> dict[str, Any]:
    spacing = resolve_spacing(sampler.defaults.get("spacing", "trailing"))
    if isinstance(spacing, TrailingSpacing):
        return {"timestep_spacing": "trailing", "steps_offset": 0}
    if isinstance(spacing, LeadingSpacing):
        return {"timestep_spacing": "leading", "steps_offset": spacing.steps_offset}
    if isinstance(spacing, LinspaceSpacing):
        return {"timestep_spacing": "linspace", "steps_offset": 0}
    raise ConfigError(f"export: sampler.spacing={spacing!r} has no diffusers timestep_spacing")


def default_scheduler(param: Parameterization, sampler: Sampler) -> str:
    """The export option matching the checkpoint's sampler (DDIM for the ODE samplers of a diffusion model)."""
    if isinstance(param.schedule, RectifiedFlowPath):
        return "flow_euler"
    if isinstance(sampler, DDPMSampler):
        return "ddpm"
    if isinstance(sampler, DPMSolverPP2MSampler):
        return "dpmpp_2m"
    return "ddim"


def diffusers_scheduler_config(
    param: Parameterization, sampler: Sampler, scheduler: str | None = None
) -> tuple[str, dict[str, Any]]:
    """(diffusers scheduler class, config) for the model's parameterization; ``scheduler`` is a key of
    :data:`SCHEDULERS` (default: the one matching ``sampler``)."""
    if param.learn_variance:
        raise ConfigError(
            "export: objective.learn_variance=true (iDDPM's learned variance) is not exported: diffusers' "
            "learned_range variance is not checked equal to latentgen's; train with a fixed variance"
        )
    time_shift(param)  # refuses T != 1000 and paths without a scheduler
    name = scheduler or default_scheduler(param, sampler)
    if name not in SCHEDULERS:
        raise ConfigError(f"export: scheduler={name!r}; use one of {sorted(SCHEDULERS)}")
    cls = SCHEDULERS[name]
    sched = param.schedule
    if isinstance(sched, RectifiedFlowPath):
        if name != "flow_euler" or not isinstance(param.prediction, VelocityPrediction):
            raise ConfigError(
                f"export: a rectified-flow model exports with scheduler=flow_euler and velocity prediction "
                f"(got scheduler={name}, {type(param.prediction).__name__})"
            )
        return cls, {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False}
    if name == "flow_euler":
        raise ConfigError("export: scheduler=flow_euler needs a rectified-flow model (objective=rectified_flow)")
    assert isinstance(sched, DiscreteSchedule)  # time_shift refused the rest
    pred = _PREDICTIONS.get(type(param.prediction))
    if pred is None:
        raise ConfigError(f"export: prediction {type(param.prediction).__name__} has no diffusers prediction_type")
    config: dict[str, Any] = {
        "num_train_timesteps": sched.num_timesteps,
        **_named_betas(sched.betas),
        "prediction_type": pred,
        **_spacing(sampler),
    }
    if name == "ddpm":
        if isinstance(sampler, DDPMSampler) and sampler.defaults["variance"] != "small":
            raise ConfigError(
                "export: sampler.variance=large: diffusers' DDPMScheduler(fixed_large) adds noise on the step to "
                "t=0, latentgen does not; use variance=small"
            )
        config.update(variance_type="fixed_small", clip_sample=False, thresholding=False)
    elif name == "ddim":
        config.update(clip_sample=False, set_alpha_to_one=True, thresholding=False)
    else:
        config.update(
            algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero", lower_order_final=True,
            thresholding=False, use_karras_sigmas=False,
        )  # fmt: skip
    return cls, config
