"""Stateless samplers: noise at t=1 -> samples at t=0, called as
``sampler(model_fn, param, noise, *, steps=None, generator=None, progress=False, **overrides) -> x0``.

The interface, the conventions and the start from an image (SDEdit, latent blending, RePaint) are documented in
:mod:`latentgen.generative.samplers.base`; the diffusion samplers are in :mod:`.diffusion`, the ODE samplers in
:mod:`.ode`. Configs name them by this package (``latentgen.generative.samplers.DDIMSampler``).
"""

from latentgen.generative.samplers.base import Sampler, SamplerOutput, Start, randn
from latentgen.generative.samplers.diffusion import (
    DDIMSampler,
    DDPMSampler,
    DPMSolverPP2MSampler,
    EulerAncestralSampler,
)
from latentgen.generative.samplers.ode import Dopri5Sampler, EulerSampler, HeunSampler

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
    "Start",
    "randn",
]
