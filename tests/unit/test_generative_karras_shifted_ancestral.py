"""Karras/EDM and SD3-shifted time grids and the ancestral Euler sampler: endpoints, monotonicity, and parity
with the diffusers schedulers of the same name (EulerDiscreteScheduler with Karras sigmas,
FlowMatchEulerDiscreteScheduler with a shift, EulerAncestralDiscreteScheduler)."""

from __future__ import annotations

import pytest
import torch

from latentgen.errors import ConfigError
from latentgen.generative.objective import Objective
from latentgen.generative.predictions import EpsPrediction, VelocityPrediction
from latentgen.generative.samplers import DDIMSampler, EulerAncestralSampler, EulerSampler
from latentgen.generative.schedules import CosinePath, RectifiedFlowPath, ScaledLinearSchedule
from latentgen.generative.time_grids import KarrasSpacing, ShiftedSpacing, TrailingSpacing, resolve_spacing
from latentgen.generative.time_samplers import UniformDiscreteTime, UniformTime

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # numpy 2 + diffusers

T = 1000
SHAPE = (2, 4, 3, 3)


def _param(schedule, prediction):
    ts = UniformDiscreteTime(schedule.num_timesteps) if schedule.is_discrete else UniformTime()
    return Objective(schedule, prediction, ts).parameterization


def _ve_sigma(schedule, t):
    s = schedule(t.double())
    return s.sigma_t / s.alpha_t


@pytest.mark.parametrize("steps", [1, 2, 10, 50])
def test_karras_grid_endpoints_and_monotonicity_on_a_discrete_schedule(steps):
    sched = ScaledLinearSchedule()
    grid = resolve_spacing("karras").grid(sched, steps)
    assert grid.shape == (steps + 1,) and grid[0] == 1.0 and grid[-1] == 0.0
    assert bool((grid[1:] < grid[:-1]).all())
    sig = _ve_sigma(sched, grid[:-1])
    torch.testing.assert_close(sig, KarrasSpacing().sigmas(sched, steps), rtol=1e-9, atol=0)
    if steps > 1:  # the last noise level is the first training step's
        torch.testing.assert_close(sig[-1], _ve_sigma(sched, torch.tensor(1.0 / T)), rtol=1e-9, atol=0)


def test_karras_grid_on_a_continuous_path_and_its_limits():
    grid = KarrasSpacing(sigma_min=0.01, sigma_max=50.0).grid(RectifiedFlowPath(), 8)
    assert bool((grid[1:] < grid[:-1]).all()) and grid[-1] == 0
    torch.testing.assert_close(_ve_sigma(RectifiedFlowPath(), grid[[0, 7]]), torch.tensor([50.0, 0.01]).double())
    with pytest.raises(ConfigError, match="sigma_max"):
        KarrasSpacing().grid(CosinePath(), 8)  # alpha(1) = 0: sigma_max is infinite


def test_karras_sigmas_match_diffusers_euler_discrete():
    diffusers = pytest.importorskip("diffusers")
    sched = ScaledLinearSchedule()
    for steps in (10, 25):
        ref = diffusers.EulerDiscreteScheduler(
            num_train_timesteps=T, trained_betas=sched.betas.tolist(), use_karras_sigmas=True
        )
        ref.set_timesteps(steps)
        grid = KarrasSpacing().grid(sched, steps)
        ours = torch.cat([_ve_sigma(sched, grid[:-1]), torch.zeros(1, dtype=torch.float64)])
        torch.testing.assert_close(ours, ref.sigmas.double(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_shifted_grid_endpoints_monotonicity_and_diffusers_parity(shift):
    diffusers = pytest.importorskip("diffusers")
    steps = 12
    spacing = ShiftedSpacing(shift=shift, t_min=shift * (1 / T) / (1 + (shift - 1) * (1 / T)))
    grid = spacing.grid(RectifiedFlowPath(), steps)
    assert grid[0] == 1.0 and grid[-1] == 0.0 and bool((grid[1:] < grid[:-1]).all())
    ref = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=shift)
    ref.set_timesteps(steps)
    torch.testing.assert_close(grid, ref.sigmas.double(), atol=1e-6, rtol=0)
    # The shift moves steps to high noise: every inner time is later than the unshifted one.
    if shift > 1:
        plain = ShiftedSpacing(shift=1.0).grid(RectifiedFlowPath(), steps)
        default = ShiftedSpacing(shift=shift).grid(RectifiedFlowPath(), steps)
        assert bool((default[1:-1] > plain[1:-1]).all())


def test_euler_on_the_shifted_grid_runs_the_named_spacing():
    param = _param(RectifiedFlowPath(), VelocityPrediction())
    seen = []

    def model_fn(x, t):
        seen.append(float(t[0]))
        return torch.zeros_like(x)

    EulerSampler(steps=4, spacing="shifted")(model_fn, param, torch.zeros(SHAPE))
    torch.testing.assert_close(torch.tensor(seen).double(), ShiftedSpacing(3.0).grid(RectifiedFlowPath(), 4)[:-1])


class _Fake:
    def __init__(self, steps, seed=7):
        g = torch.Generator().manual_seed(seed)
        self.outputs = [torch.randn(SHAPE, generator=g) for _ in range(steps)]
        self.xs = []

    def __call__(self, x, t):
        self.xs.append(x.clone())
        return self.outputs[len(self.xs) - 1].clone()


def _k_diffusion_euler_ancestral(outputs, sigmas, noise, generator):
    """k-diffusion's sample_euler_ancestral in float64, in x / alpha; returns (model inputs, x at sigma=0)."""
    x, inputs = noise.double() * (sigmas[0] ** 2 + 1).sqrt(), []
    for i in range(sigmas.numel() - 1):
        inputs.append(x / (sigmas[i] ** 2 + 1).sqrt())  # the VP x_t the network sees
        s, s_next = sigmas[i], sigmas[i + 1]
        x0 = x - s * outputs[i].double()
        up = (s_next**2 * (s**2 - s_next**2) / s**2).sqrt()
        down = (s_next**2 - up**2).sqrt()
        x = x + (x - x0) / s * (down - s) + torch.randn(SHAPE, generator=generator).double() * up
    return inputs, x


def test_euler_ancestral_matches_k_diffusion_and_diffusers():
    diffusers = pytest.importorskip("diffusers")
    sched, steps = ScaledLinearSchedule(), 10
    ref = diffusers.EulerAncestralDiscreteScheduler(
        num_train_timesteps=T, trained_betas=sched.betas.tolist(), timestep_spacing="trailing"
    )
    ref.set_timesteps(steps)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(11))
    fake_ref, fake = _Fake(steps), _Fake(steps)
    x = noise * ref.init_noise_sigma  # diffusers works in x / alpha
    g_ref = torch.Generator().manual_seed(3)
    for t in ref.timesteps:
        out = fake_ref(ref.scale_model_input(x, t), None)
        x = ref.step(out, t, x, generator=g_ref).prev_sample
    ours = EulerAncestralSampler(steps=steps)(
        fake, _param(sched, EpsPrediction()), noise, generator=torch.Generator().manual_seed(3)
    )
    # The same formula in float64 on our sigmas: float32 rounding only.
    grid = TrailingSpacing().grid(sched, steps)
    sigmas = torch.cat([_ve_sigma(sched, grid[:-1]), torch.zeros(1, dtype=torch.float64)])
    inputs, x64 = _k_diffusion_euler_ancestral(_Fake(steps).outputs, sigmas, noise, torch.Generator().manual_seed(3))
    for a, b in zip(fake.xs, inputs, strict=True):
        torch.testing.assert_close(a.double(), b, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(ours.double(), x64, atol=2e-4, rtol=2e-4)
    # diffusers keeps its sigma table in float32 (2e-5 relative off) and steps in float32 in x / alpha
    # (|x| up to sigma_max ~ 15): a few 1e-3 apart; a wrong noise level or noise draw would differ by O(1).
    for a, b in zip(fake.xs, fake_ref.xs, strict=True):
        torch.testing.assert_close(a, b, atol=5e-3, rtol=5e-3)
    torch.testing.assert_close(ours, x, atol=5e-3, rtol=5e-3)


def test_euler_ancestral_is_ddim_with_eta_one():
    param = _param(ScaledLinearSchedule(), EpsPrediction())
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    a = EulerAncestralSampler(steps=6)(_Fake(6), param, noise, generator=torch.Generator().manual_seed(1))
    b = DDIMSampler(steps=6, eta=1.0)(_Fake(6), param, noise, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
