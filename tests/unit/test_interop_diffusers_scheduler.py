"""latentgen's schedule + prediction + sampler -> a diffusers scheduler config that samples the same: loops with a
random-weight exported UNet from the same noise (and generator) agree to 1e-4; unmappable options are refused."""

from __future__ import annotations

import pytest
import torch

from latentgen.errors import ConfigError
from latentgen.generative.parameterization import Parameterization
from latentgen.generative.predictions import EpsPrediction, VelocityPrediction, VPrediction
from latentgen.generative.samplers import DDIMSampler, DDPMSampler, DPMSolverPP2MSampler, EulerSampler
from latentgen.generative.schedules import (
    CosinePath,
    CosineSchedule,
    LinearSchedule,
    RectifiedFlowPath,
    ScaledLinearSchedule,
)
from latentgen.generative.time_grids import LeadingSpacing
from latentgen.interop.diffusers_scheduler import diffusers_scheduler_config, time_shift
from latentgen.interop.diffusers_unet import unet_to_diffusers
from latentgen.networks import UNet

diffusers = pytest.importorskip("diffusers")


def random_unet() -> UNet:
    torch.manual_seed(0)
    unet = UNet(4, 4, 32, (1, 2), 1, 8, attention_type="plain", attention_resolutions=[4]).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet


def diffusers_loop(param, sampler, scheduler: str, noise, steps, seed=None, **set_kw) -> torch.Tensor:
    unet = random_unet()
    model = unet_to_diffusers(unet, time_shift=time_shift(param))
    cls, config = diffusers_scheduler_config(param, sampler, scheduler)
    sched = getattr(diffusers, cls)(**config)
    sched.set_timesteps(**({"sigmas": set_kw["sigmas"]} if set_kw else {"num_inference_steps": steps}))
    g = None if seed is None else torch.Generator().manual_seed(seed)
    x = noise.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            kw = {"generator": g} if cls in ("DDPMScheduler", "DDIMScheduler") else {}
            x = sched.step(model(x, t).sample, t, x, **kw).prev_sample
    return x


def latentgen_loop(param, sampler, noise, steps, seed=None) -> torch.Tensor:
    unet = random_unet()
    g = None if seed is None else torch.Generator().manual_seed(seed)
    return sampler(lambda x, t: unet(x, t), param, noise, steps=steps, generator=g)


NOISE = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
CASES = [
    ("ddpm_eps", Parameterization(ScaledLinearSchedule(), EpsPrediction()), DDPMSampler(), "ddpm", 10),
    ("ddim_eps_leading", Parameterization(LinearSchedule(), EpsPrediction()),
     DDIMSampler(spacing=LeadingSpacing(1)), "ddim", 20),
    ("ddim_v_cosine", Parameterization(CosineSchedule(), VPrediction()), DDIMSampler(), "ddim", 10),
    ("ddim_v_ztsnr", Parameterization(ScaledLinearSchedule(zero_terminal_snr=True), VPrediction()),
     DDIMSampler(), "ddim", 10),
    ("dpmpp_2m", Parameterization(ScaledLinearSchedule(), EpsPrediction()), DPMSolverPP2MSampler(), "dpmpp_2m", 10),
]  # fmt: skip


@pytest.mark.parametrize("name,param,sampler,scheduler,steps", CASES, ids=[c[0] for c in CASES])
def test_diffusers_scheduler_samples_as_latentgen(name, param, sampler, scheduler, steps):
    ours = latentgen_loop(param, sampler, NOISE, steps, seed=7)
    theirs = diffusers_loop(param, sampler, scheduler, NOISE, steps, seed=7)
    torch.testing.assert_close(theirs, ours, atol=1e-4 * max(1.0, float(ours.abs().max())), rtol=0)


def test_flow_euler_samples_as_latentgen_on_both_grids():
    param = Parameterization(RectifiedFlowPath(), VelocityPrediction())
    trailing = [1.0 - i / 10 for i in range(10)]
    ours = latentgen_loop(param, EulerSampler(), NOISE, 10)
    torch.testing.assert_close(diffusers_loop(param, EulerSampler(), None, NOISE, 10, sigmas=trailing), ours,
                               atol=1e-4, rtol=0)  # fmt: skip


def test_named_beta_schedules_and_trained_betas():
    eps = EpsPrediction()
    cfg = lambda sched: diffusers_scheduler_config(Parameterization(sched, eps), DDIMSampler())[1]  # noqa: E731
    assert cfg(ScaledLinearSchedule())["beta_schedule"] == "scaled_linear"
    assert cfg(LinearSchedule())["beta_schedule"] == "linear"
    assert cfg(CosineSchedule())["beta_schedule"] == "squaredcos_cap_v2"
    ztsnr = cfg(ScaledLinearSchedule(zero_terminal_snr=True))
    assert ztsnr["trained_betas"] is not None and ztsnr["trained_betas"][-1] == 1.0
    assert cfg(CosineSchedule(s=0.02))["trained_betas"] is not None


@pytest.mark.parametrize(
    "param,sampler,scheduler,option",
    [
        (Parameterization(ScaledLinearSchedule(), EpsPrediction(), True), DDPMSampler(), None, "learn_variance"),
        (Parameterization(ScaledLinearSchedule(num_timesteps=500), EpsPrediction()), DDIMSampler(), None,
         "num_timesteps"),
        (Parameterization(CosinePath(), VelocityPrediction()), EulerSampler(), None, "CosinePath"),
        (Parameterization(ScaledLinearSchedule(), EpsPrediction()), DDPMSampler(variance="large"), None, "variance"),
        (Parameterization(ScaledLinearSchedule(), EpsPrediction()), DDIMSampler(), "flow_euler", "flow_euler"),
        (Parameterization(ScaledLinearSchedule(), EpsPrediction()), DDIMSampler(), "heun", "scheduler"),
    ],
)  # fmt: skip
def test_unmappable_options_are_refused_by_name(param, sampler, scheduler, option):
    with pytest.raises(ConfigError, match=option):
        diffusers_scheduler_config(param, sampler, scheduler)
