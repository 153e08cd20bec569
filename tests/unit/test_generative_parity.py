"""Parity with diffusers' schedulers (test-only dependency) on the same betas and model outputs.

Index <-> time mapping: diffusers' DDPM/DDIM/DPM-Solver timestep ``k`` (0..T-1) is our grid time
``t = (k + 1)/T``; FlowMatchEulerDiscreteScheduler's timestep is ``1000 * sigma`` with sigma = our t.
Each test drives both with the same fixed sequence of fake model outputs (the model ignores its input)
and compares the time grids, the state seen by the model at every step, and the final sample.

diffusers computes its tables in float32 and we in float64, hence tolerances of 1e-4 (abs and rel)
on trajectories of up to 50 steps with random (large) fake outputs.

Settings (explicit, since diffusers' defaults differ per scheduler):
- DDPM: ``timestep_spacing="leading", steps_offset=0`` (DDPMScheduler's default) == ``LeadingSpacing(0)``.
  Not compared: strided "trailing" DDPM, where diffusers adds noise at its last step (it tests t > 0 on
  the timestep value) whereas we never add noise on the step that lands on t=0.
- DDIM: ``leading, steps_offset=1, set_alpha_to_one=True`` (LDM/SD) == ``LeadingSpacing(1)``; and
  ``trailing`` + ``rescale_betas_zero_snr`` + v-prediction. diffusers' DDIM takes ``prev = k - T//N``, which
  equals our next grid point only when T % N == 0 (true here; "linspace" would differ legitimately).
- DPM-Solver++(2M): ``algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
  timestep_spacing="trailing", final_sigmas_type="zero"`` == ``TrailingSpacing``. (diffusers' DPM "linspace",
  ``linspace(0, T-1, N+1)[::-1][:-1]``, is a different grid from its DDIM "linspace".)
- Flow-matching Euler: ``shift=1``; its grid is ``linspace(1, 1/T, N)`` + [0] == ``LinspaceSpacing(t_min=1/T)``
  (our default, trailing, is ``linspace(1, 0, N+1)``: a deliberate difference for continuous-time flows).
"""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from latentgen.generative.objective import Objective  # noqa: E402
from latentgen.generative.predictions import EpsPrediction, VelocityPrediction, VPrediction  # noqa: E402
from latentgen.generative.samplers import (  # noqa: E402
    DDIMSampler,
    DDPMSampler,
    DPMSolverPP2MSampler,
    EulerSampler,
)
from latentgen.generative.schedules import RectifiedFlowPath, ScaledLinearSchedule
from latentgen.generative.time_grids import LeadingSpacing, LinspaceSpacing, TrailingSpacing
from latentgen.generative.time_samplers import UniformDiscreteTime, UniformTime

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # numpy 2 + diffusers

T = 1000
SHAPE = (2, 4, 3, 3)
TOL = dict(atol=1e-4, rtol=1e-4)  # float32 tables in diffusers; algorithmic differences are >= 1e-2


class FakeModel:
    """Returns a fixed sequence of outputs, one per call; records (x_t, t) of each call."""

    def __init__(self, steps: int, channels: int = SHAPE[1], seed: int = 7) -> None:
        g = torch.Generator().manual_seed(seed)
        self.outputs = [torch.randn(SHAPE[0], channels, *SHAPE[2:], generator=g) for _ in range(steps)]
        if channels == 2 * SHAPE[1]:  # learned variance: v in [-1, 1]
            for o in self.outputs:
                o[:, SHAPE[1] :] = torch.tanh(o[:, SHAPE[1] :])
        self.xs: list[torch.Tensor] = []
        self.ts: list[torch.Tensor] = []

    def __call__(self, x, t):
        self.xs.append(x.clone())
        if t is not None:  # the diffusers loop passes None
            self.ts.append(t.clone())
        return self.outputs[len(self.xs) - 1].clone()


def _objective(schedule, prediction, learn_variance=False):
    ts = UniformDiscreteTime(schedule.num_timesteps) if schedule.is_discrete else UniformTime()
    return Objective(schedule, prediction, ts, learn_variance=learn_variance).parameterization


def _noise(seed=11):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def _check_grid(model: FakeModel, timesteps: torch.Tensor, t_of_timestep):
    ours = torch.stack([t[0] for t in model.ts]).double()
    torch.testing.assert_close(ours, t_of_timestep(timesteps.double()), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------ DDPM


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned_range"])
def test_ddpm_matches_diffusers(variance):
    learned = variance == "learned_range"
    sched = ScaledLinearSchedule()
    steps = 10
    ref = diffusers.DDPMScheduler(
        num_train_timesteps=T,
        trained_betas=sched.betas.tolist(),
        variance_type=variance,
        clip_sample=False,
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=0,
    )
    ref.set_timesteps(steps)
    assert ref.timesteps.tolist() == LeadingSpacing(0).indices(T, steps).tolist()

    channels = 2 * SHAPE[1] if learned else SHAPE[1]
    fake_ref, fake = FakeModel(steps, channels), FakeModel(steps, channels)
    x = _noise()
    g_ref = torch.Generator().manual_seed(3)
    for k in ref.timesteps:
        x = ref.step(fake_ref(x, None), k, x, generator=g_ref).prev_sample
    obj = _objective(sched, EpsPrediction(), learn_variance=learned)
    fixed = "large" if variance == "fixed_large" else "small"
    sampler = DDPMSampler(steps=steps, spacing=LeadingSpacing(0), variance=fixed)
    ours = sampler(fake, obj, _noise(), generator=torch.Generator().manual_seed(3))

    _check_grid(fake, ref.timesteps, lambda k: (k + 1) / T)
    for a, b in zip(fake.xs, fake_ref.xs):
        torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(ours, x, **TOL)


# ------------------------------------------------------------------------------------------ DDIM


@pytest.mark.parametrize(
    "eta,spacing,ztsnr",
    [(0.0, "leading", False), (0.6, "leading", False), (0.0, "trailing", True), (1.0, "trailing", True)],
    ids=["eta0_leading", "eta0.6_leading", "eta0_trailing_ztsnr_v", "eta1_trailing_ztsnr_v"],
)
def test_ddim_matches_diffusers(eta, spacing, ztsnr):
    base = ScaledLinearSchedule()
    sched = ScaledLinearSchedule(zero_terminal_snr=ztsnr)
    steps = 50
    ref = diffusers.DDIMScheduler(
        num_train_timesteps=T,
        trained_betas=base.betas.tolist(),
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=1 if spacing == "leading" else 0,
        timestep_spacing=spacing,
        prediction_type="v_prediction" if ztsnr else "epsilon",
        rescale_betas_zero_snr=ztsnr,
    )
    ref.set_timesteps(steps)
    ours_spacing = LeadingSpacing(1) if spacing == "leading" else TrailingSpacing()
    assert ref.timesteps.tolist() == ours_spacing.indices(T, steps).tolist()
    torch.testing.assert_close(ref.alphas_cumprod.double(), sched.alphas_cumprod, atol=1e-6, rtol=1e-5)

    # our sampler draws z_i ~ generator at every step but the last (which lands on t=0 with c=0)
    g = torch.Generator().manual_seed(5)
    zs = [torch.randn(SHAPE, generator=g) for _ in range(steps - 1)] + [torch.zeros(SHAPE)]
    fake_ref, fake = FakeModel(steps), FakeModel(steps)
    x = _noise()
    for i, k in enumerate(ref.timesteps):
        x = ref.step(fake_ref(x, None), k, x, eta=eta, variance_noise=zs[i] if eta > 0 else None).prev_sample
    obj = _objective(sched, VPrediction() if ztsnr else EpsPrediction())
    sampler = DDIMSampler(steps=steps, eta=eta, spacing=ours_spacing)
    ours = sampler(fake, obj, _noise(), generator=torch.Generator().manual_seed(5))

    _check_grid(fake, ref.timesteps, lambda k: (k + 1) / T)
    for a, b in zip(fake.xs, fake_ref.xs):
        torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(ours, x, **TOL)


# ------------------------------------------------------------------------------------------ DPM-Solver++(2M)


@pytest.mark.parametrize("steps", [8, 20])
def test_dpmpp_2m_matches_diffusers(steps):
    sched = ScaledLinearSchedule()
    ref = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T,
        trained_betas=sched.betas.tolist(),
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        prediction_type="epsilon",
        timestep_spacing="trailing",
        final_sigmas_type="zero",
        lower_order_final=True,
        thresholding=False,
    )
    ref.set_timesteps(steps)
    assert ref.timesteps.tolist() == TrailingSpacing().indices(T, steps).tolist()

    fake_ref, fake = FakeModel(steps), FakeModel(steps)
    x = _noise()
    for k in ref.timesteps:
        x = ref.step(fake_ref(x, None), k, x).prev_sample
    ours = DPMSolverPP2MSampler(steps=steps)(fake, _objective(sched, EpsPrediction()), _noise())

    _check_grid(fake, ref.timesteps, lambda k: (k + 1) / T)
    for a, b in zip(fake.xs, fake_ref.xs):
        torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(ours, x, **TOL)


# ------------------------------------------------------------------------------------------ flow-matching Euler


def test_flow_match_euler_matches_diffusers():
    steps = 12
    ref = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=1.0)
    ref.set_timesteps(steps)
    spacing = LinspaceSpacing(t_min=1.0 / T)
    torch.testing.assert_close(ref.sigmas.double(), spacing.grid(RectifiedFlowPath(), steps), atol=1e-6, rtol=0)

    fake_ref, fake = FakeModel(steps), FakeModel(steps)
    x = _noise()
    for ts in ref.timesteps:
        x = ref.step(fake_ref(x, None), ts, x).prev_sample
    obj = _objective(RectifiedFlowPath(), VelocityPrediction())
    ours = EulerSampler(steps=steps, spacing=spacing)(fake, obj, _noise())

    _check_grid(fake, ref.timesteps, lambda ts: ts / T)  # diffusers timestep = 1000 * sigma = 1000 * t
    for a, b in zip(fake.xs, fake_ref.xs):
        torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(ours, x, **TOL)


# ------------------------------------------------------------------------------------------ grids that differ


def test_linspace_grids():
    """Our discrete "linspace" is diffusers' DDIM/DDPM "linspace" grid. (diffusers' DDIM then steps to
    k - T//N rather than to the next grid point, so DDIM trajectories are only compared for leading/trailing
    with T % N == 0.) diffusers' DPM-Solver "linspace" is another grid, which we do not reproduce."""
    betas = ScaledLinearSchedule().betas.tolist()
    for steps in (7, 50):
        ddim = diffusers.DDIMScheduler(num_train_timesteps=T, trained_betas=betas, timestep_spacing="linspace")
        ddim.set_timesteps(steps)
        assert ddim.timesteps.tolist() == LinspaceSpacing().indices(T, steps).tolist()
    dpm = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T, trained_betas=betas, timestep_spacing="linspace")
    dpm.set_timesteps(20)
    assert dpm.timesteps.tolist() != LinspaceSpacing().indices(T, 20).tolist()
