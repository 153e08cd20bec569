"""Generative modelling shared by diffusion and flow matching (docs/diffusion.md).

Diffusion versus flow matching is a config choice: ``Objective(schedule, prediction, time_sampler,
weighting)`` plus a stateless sampler. Conventions: t in [0, 1], t=0 data, t=1 noise,
``x_t = alpha_t x0 + sigma_t eps``; discrete T-step schedules use ``t_k = (k + 1)/T``.
"""

from latentgen.generative.guidance import CFGModelFn, classifier_free_guidance
from latentgen.generative.objective import Objective
from latentgen.generative.parameterization import Parameterization
from latentgen.generative.predictions import EpsPrediction, Prediction, VelocityPrediction, VPrediction, X0Prediction
from latentgen.generative.samplers import (
    DDIMSampler,
    DDPMSampler,
    Dopri5Sampler,
    DPMSolverPP2MSampler,
    EulerSampler,
    HeunSampler,
    Sampler,
    SamplerOutput,
)
from latentgen.generative.schedules import (
    CosinePath,
    CosineSchedule,
    DiscreteSchedule,
    LinearSchedule,
    NoiseSchedule,
    RectifiedFlowPath,
    ScaledLinearSchedule,
    ScheduleOutput,
)
from latentgen.generative.time_grids import LeadingSpacing, LinspaceSpacing, Spacing, TrailingSpacing
from latentgen.generative.time_samplers import LogitNormalTime, UniformDiscreteTime, UniformTime
from latentgen.generative.weighting import MinSNRWeighting, UnitWeighting

__all__ = [
    "CFGModelFn",
    "classifier_free_guidance",
    "Objective",
    "Parameterization",
    "Prediction",
    "EpsPrediction",
    "X0Prediction",
    "VPrediction",
    "VelocityPrediction",
    "Sampler",
    "SamplerOutput",
    "DDPMSampler",
    "DDIMSampler",
    "EulerSampler",
    "HeunSampler",
    "Dopri5Sampler",
    "DPMSolverPP2MSampler",
    "Spacing",
    "LeadingSpacing",
    "TrailingSpacing",
    "LinspaceSpacing",
    "NoiseSchedule",
    "ScheduleOutput",
    "DiscreteSchedule",
    "LinearSchedule",
    "ScaledLinearSchedule",
    "CosineSchedule",
    "RectifiedFlowPath",
    "CosinePath",
    "UniformDiscreteTime",
    "UniformTime",
    "LogitNormalTime",
    "UnitWeighting",
    "MinSNRWeighting",
]
