"""Samplers started from an image (SDEdit strength), a known region kept by latent blending (and RePaint's
resampling), and the guidance options: negative conditioning, rescale (Lin et al. 2023) and interval."""

from __future__ import annotations

import pytest
import torch

from latentgen.conditioning.base import Conditioning
from latentgen.errors import ConfigError
from latentgen.generative.guidance import CFGModelFn
from latentgen.generative.objective import Objective
from latentgen.generative.predictions import EpsPrediction, VelocityPrediction
from latentgen.generative.samplers import (
    DDIMSampler,
    DDPMSampler,
    Dopri5Sampler,
    DPMSolverPP2MSampler,
    EulerAncestralSampler,
    EulerSampler,
    HeunSampler,
)
from latentgen.generative.schedules import RectifiedFlowPath, ScaledLinearSchedule
from latentgen.generative.time_samplers import UniformDiscreteTime, UniformTime

SHAPE = (2, 3, 4, 4)


def _param(schedule, prediction):
    ts = UniformDiscreteTime(schedule.num_timesteps) if schedule.is_discrete else UniformTime()
    return Objective(schedule, prediction, ts).parameterization


VP = lambda: _param(ScaledLinearSchedule(), EpsPrediction())  # noqa: E731
RF = lambda: _param(RectifiedFlowPath(), VelocityPrediction())  # noqa: E731
FIXED_STEP = [
    ("ddpm", DDPMSampler(steps=6), VP),
    ("ddim", DDIMSampler(steps=6), VP),
    ("ddim_eta", DDIMSampler(steps=6, eta=1.0), VP),
    ("euler_ancestral", EulerAncestralSampler(steps=6), VP),
    ("euler", EulerSampler(steps=6), RF),
    ("heun", HeunSampler(steps=6), RF),
    ("dpmpp_2m", DPMSolverPP2MSampler(steps=6), VP),
]
ALL = [*FIXED_STEP, ("dopri5", Dopri5Sampler(atol=1e-3, rtol=1e-3), RF)]


class Recorder:
    """A smooth fake network (a fixed linear map of x_t) that records the times and inputs it sees."""

    def __init__(self) -> None:
        self.ts: list[float] = []
        self.xs: list[torch.Tensor] = []

    def __call__(self, x, t):
        self.ts.append(float(t[0]))
        self.xs.append(x.clone())
        return 0.5 * x + 0.1


def _tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)  # init, noise


@pytest.mark.parametrize("case", ALL, ids=[c[0] for c in ALL])
def test_strength_zero_returns_the_init_and_calls_no_network(case):
    _, sampler, make = case
    init, noise = _tensors()
    net = Recorder()
    out = sampler.sample(net, make(), noise, init=init, strength=0.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out.samples, init) and out.nfe == 0


@pytest.mark.parametrize("case", FIXED_STEP, ids=[c[0] for c in FIXED_STEP])
def test_strength_runs_the_tail_of_the_grid_from_the_noised_init(case):
    _, sampler, make = case
    param = make()
    init, noise = _tensors()
    full, part = Recorder(), Recorder()
    sampler(full, param, noise, generator=torch.Generator().manual_seed(1))
    sampler(part, param, noise, init=init, strength=0.5, generator=torch.Generator().manual_seed(1))
    full_times = sorted(set(full.ts), reverse=True)
    assert sorted(set(part.ts), reverse=True) == full_times[-3:]  # int(6 * 0.5) = 3 grid points
    s = param.schedule(torch.tensor(part.ts[0], dtype=torch.float64))
    torch.testing.assert_close(part.xs[0], (s.alpha_t * init + s.sigma_t * noise).float())


@pytest.mark.parametrize("case", ALL, ids=[c[0] for c in ALL])
def test_strength_one_without_a_mask_is_sampling_from_noise(case):
    _, sampler, make = case
    init, noise = _tensors()
    a = sampler(Recorder(), make(), noise, generator=torch.Generator().manual_seed(1))
    b = sampler(Recorder(), make(), noise, init=init, strength=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


@pytest.mark.parametrize("resample", [1, 3])
@pytest.mark.parametrize("case", FIXED_STEP, ids=[c[0] for c in FIXED_STEP])
def test_a_mask_keeps_the_known_region_exactly(case, resample):
    name, sampler, make = case
    if resample > 1 and not sampler.supports_resampling:
        with pytest.raises(ConfigError, match="resample"):
            sampler(Recorder(), make(), _tensors()[1], init=_tensors()[0], mask=torch.ones(SHAPE), resample=resample)
        return
    init, noise = _tensors()
    mask = torch.zeros(SHAPE[0], 1, *SHAPE[2:])
    mask[..., :, 2:] = 1.0  # generate the right half
    net = Recorder()
    out = sampler.sample(
        net, make(), noise, init=init, mask=mask, resample=resample, generator=torch.Generator().manual_seed(1)
    )
    keep = (mask == 0).expand(SHAPE)
    assert torch.equal(out.samples[keep], init[keep])
    assert not torch.allclose(out.samples[~keep], init[~keep])
    if name != "heun":  # one evaluation per step; every step but the last (to t=0) is run resample times
        assert out.nfe == 5 * resample + 1


def test_start_options_are_checked():
    init, noise = _tensors()
    with pytest.raises(ConfigError, match="strength"):
        DDIMSampler(steps=4)(Recorder(), VP(), noise, init=init, strength=1.5)
    with pytest.raises(ConfigError, match="init"):
        DDIMSampler(steps=4)(Recorder(), VP(), noise, strength=0.5)
    with pytest.raises(ConfigError, match="mask"):
        Dopri5Sampler()(Recorder(), RF(), noise, init=init, mask=torch.ones(SHAPE))
    with pytest.raises(ConfigError, match="needs a mask"):
        DDIMSampler(steps=4)(Recorder(), VP(), noise, init=init, resample=2)


# ---------------------------------------------------------------------------------------------- guidance


def _denoise(x, t, cond):
    """Output = x * context value + t: a fake denoiser whose output tells which condition it saw."""
    return x * cond.vector.view(-1, 1, 1, 1) + t.view(-1, 1, 1, 1)


def _cond(v, b=2):
    return Conditioning(vector=torch.full((b, 1), float(v)))


def test_a_negative_condition_replaces_the_null_branch():
    x, t = torch.randn(SHAPE), torch.full((2,), 0.5)
    fn = CFGModelFn(_denoise, _cond(2.0), _cond(-1.0), scale=3.0)
    out_neg, out_c = _denoise(x, t, _cond(-1.0)), _denoise(x, t, _cond(2.0))
    torch.testing.assert_close(fn(x, t), out_neg + 3.0 * (out_c - out_neg))


def test_guidance_rescale_matches_the_conditional_std():
    x, t = torch.randn(SHAPE), torch.full((2,), 0.5)
    plain = CFGModelFn(_denoise, _cond(2.0), _cond(0.5), scale=5.0)(x, t)
    full = CFGModelFn(_denoise, _cond(2.0), _cond(0.5), scale=5.0, rescale=1.0)(x, t)
    half = CFGModelFn(_denoise, _cond(2.0), _cond(0.5), scale=5.0, rescale=0.5)(x, t)
    out_c = _denoise(x, t, _cond(2.0))
    dims = (1, 2, 3)
    torch.testing.assert_close(full.std(dim=dims), out_c.std(dim=dims))  # Lin et al. Eq. 15
    torch.testing.assert_close(half, 0.5 * full + 0.5 * plain)  # Eq. 16
    assert not torch.allclose(full, plain)
    with pytest.raises(ConfigError):
        CFGModelFn(_denoise, _cond(2.0), _cond(0.5), scale=5.0, rescale=1.5)


def test_guidance_interval_guides_only_inside():
    x = torch.randn(SHAPE)
    t = torch.tensor([0.2, 0.8])  # one sample outside [0.5, 0.9], one inside
    fn = CFGModelFn(_denoise, _cond(2.0), _cond(0.5), scale=4.0, interval=(0.5, 0.9))
    guided = CFGModelFn(_denoise, _cond(2.0), _cond(0.5), scale=4.0)(x, t)
    out = fn(x, t)
    torch.testing.assert_close(out[0], _denoise(x, t, _cond(2.0))[0])
    torch.testing.assert_close(out[1], guided[1])


def test_repaint_jumps_rerun_chunks_of_steps():
    """jump=j, resample=r: each chunk of j steps that does not end at t=0 runs r times, after noising back to
    the chunk's first time; the known region is still kept exactly."""
    init, noise = _tensors()
    mask = torch.zeros(SHAPE[0], 1, *SHAPE[2:])
    mask[..., 2:] = 1.0
    net = Recorder()
    out = DDIMSampler(steps=6).sample(
        net, VP(), noise, init=init, mask=mask, resample=2, jump=3, generator=torch.Generator().manual_seed(1)
    )
    # chunks (0, 1, 2) and (3, 4, 5): the first runs twice, the second ends at t=0 and runs once
    grid = sorted(set(net.ts), reverse=True)
    assert out.nfe == 3 * 2 + 3
    assert net.ts == [grid[i] for i in (0, 1, 2, 0, 1, 2, 3, 4, 5)]
    keep = (mask == 0).expand(SHAPE)
    assert torch.equal(out.samples[keep], init[keep])
    with pytest.raises(ConfigError, match="jump"):
        DDIMSampler(steps=6)(Recorder(), VP(), noise, init=init, mask=mask, jump=0)
