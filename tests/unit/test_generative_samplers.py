"""Samplers on a Gaussian toy with the exact denoiser: every sampler recovers the data moments.

Data x0 ~ N(mu, diag(sd^2)) of shape (B, 2, 1, 1). The optimal denoiser is closed form:
E[x0 | x_t] = mu + alpha sd^2 / (alpha^2 sd^2 + sigma^2) (x_t - alpha mu), E[eps | x_t] = sigma (x_t - alpha mu)
/ (alpha^2 sd^2 + sigma^2); it is expressed in each prediction parameterization through ``target``.

The start noise is the exact marginal at t=1 built from a *standardized* z (mean 0, std 1 per channel),
so a deterministic sampler (an affine map of z here) has no sampling error: the tolerances measure
discretization only. Stochastic samplers use 20000 samples and tolerances of ~4 standard errors.
"""

from __future__ import annotations

import pytest
import torch

from latentgen.errors import ConfigError
from latentgen.generative.objective import Objective
from latentgen.generative.parameterization import Parameterization
from latentgen.generative.predictions import EpsPrediction, VelocityPrediction, VPrediction, X0Prediction
from latentgen.generative.samplers import (
    DDIMSampler,
    DDPMSampler,
    Dopri5Sampler,
    DPMSolverPP2MSampler,
    EulerSampler,
    HeunSampler,
)
from latentgen.generative.schedules import CosinePath, LinearSchedule, RectifiedFlowPath, ScaledLinearSchedule
from latentgen.generative.time_grids import LeadingSpacing, LinspaceSpacing, TrailingSpacing
from latentgen.generative.time_samplers import UniformDiscreteTime, UniformTime

MU = torch.tensor([0.5, -1.0]).view(1, 2, 1, 1)
SD = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)


def objective(schedule, prediction, learn_variance=False) -> Parameterization:
    """What a sampler gets of a model trained with this objective (built through Objective for its checks)."""
    ts = UniformDiscreteTime(schedule.num_timesteps) if schedule.is_discrete else UniformTime()
    return Objective(schedule, prediction, ts, learn_variance=learn_variance).parameterization


def gaussian_oracle(obj, calls=None):
    """model_fn(x_t, t) returning the exact E[target | x_t] (2x channels with a learned variance)."""

    def model_fn(x, t):
        if calls is not None:
            calls.append(t)
        s = obj.schedule(t).reshape_like(x)
        a, sg = s.alpha_t, s.sigma_t
        var = a**2 * SD**2 + sg**2
        x0 = MU + a * SD**2 / var * (x - a * MU)
        eps = sg * (x - a * MU) / var
        out = obj.prediction.target(x0, eps, s)
        return torch.cat([out, torch.zeros_like(out)], 1) if obj.learn_variance else out

    return model_fn


def start_noise(obj, n, seed=0, standardize=True):
    z = torch.randn(n, 2, 1, 1, generator=torch.Generator().manual_seed(seed))
    if standardize:
        z = (z - z.mean(0)) / z.std(0)
    s = obj.schedule(torch.ones(1)).reshape_like(z)
    return s.alpha_t * MU + (s.alpha_t**2 * SD**2 + s.sigma_t**2).sqrt() * z


def moment_errors(x):
    mean_err = (x.mean(0) - MU[0]).abs().flatten()  # (2,)
    std_err = (x.std(0) / SD[0] - 1).abs().flatten()  # (2,) relative
    return mean_err.max().item(), std_err.max().item()


SL_EPS = lambda: objective(ScaledLinearSchedule(), EpsPrediction())  # noqa: E731
ZT_V = lambda: objective(ScaledLinearSchedule(zero_terminal_snr=True), VPrediction())  # noqa: E731
LIN_X0 = lambda: objective(LinearSchedule(), X0Prediction())  # noqa: E731
RF = lambda: objective(RectifiedFlowPath(), VelocityPrediction())  # noqa: E731
RF_X0 = lambda: objective(RectifiedFlowPath(), X0Prediction())  # noqa: E731
COS_V = lambda: objective(CosinePath(), VPrediction())  # noqa: E731
SL_EPS_LV = lambda: objective(ScaledLinearSchedule(), EpsPrediction(), learn_variance=True)  # noqa: E731

# (id, sampler, objective, call kwargs, tolerance on the relative std error)
DETERMINISTIC = [
    ("ddim_vp_eps", DDIMSampler(), SL_EPS, dict(steps=200, spacing="linspace"), 0.02),
    ("ddim_ztsnr_v", DDIMSampler(), ZT_V, dict(steps=200), 0.02),
    ("ddim_rf", DDIMSampler(), RF, dict(steps=100), 0.02),
    ("euler_rf", EulerSampler(), RF, dict(steps=100), 0.02),
    ("euler_rf_x0", EulerSampler(), RF_X0, dict(steps=100), 0.02),
    ("euler_vp_eps", EulerSampler(), SL_EPS, dict(steps=200, spacing="linspace"), 0.02),
    ("euler_vp_x0", EulerSampler(), LIN_X0, dict(steps=200, spacing="linspace"), 0.02),
    ("heun_rf", HeunSampler(), RF, dict(steps=20), 0.01),
    ("heun_vp_eps", HeunSampler(), SL_EPS, dict(steps=100, spacing="linspace"), 0.02),
    ("dopri5_rf", Dopri5Sampler(), RF, {}, 0.002),
    ("dopri5_cosine_v", Dopri5Sampler(), COS_V, {}, 0.002),
    ("dopri5_vp_eps", Dopri5Sampler(), SL_EPS, {}, 0.02),
    ("dpmpp_vp_eps", DPMSolverPP2MSampler(), SL_EPS, dict(steps=80, spacing="linspace"), 0.02),
    ("dpmpp_ztsnr_v", DPMSolverPP2MSampler(), ZT_V, dict(steps=80), 0.02),
    ("dpmpp_rf", DPMSolverPP2MSampler(), RF, dict(steps=40), 0.01),
]


@pytest.mark.parametrize("case", DETERMINISTIC, ids=[c[0] for c in DETERMINISTIC])
def test_deterministic_samplers_recover_gaussian(case):
    _, sampler, make, kw, tol = case
    obj = make()
    x1 = start_noise(obj, 4000)
    out = sampler.sample(gaussian_oracle(obj), obj, x1, **kw)
    mean_err, std_err = moment_errors(out.samples)
    assert mean_err < 0.02 and std_err < tol, (mean_err, std_err)
    expected_nfe = sampler.nfe(kw.get("steps"))
    assert expected_nfe is None or out.nfe == expected_nfe
    # deterministic given the noise
    again = sampler(gaussian_oracle(obj), obj, x1, **kw)
    assert torch.equal(again, out.samples)


STOCHASTIC = [
    ("ddpm_full_T", DDPMSampler(), SL_EPS, dict(steps=None, spacing="trailing")),
    ("ddpm_strided_large", DDPMSampler(variance="large"), SL_EPS, dict(steps=100, spacing="linspace")),
    ("ddpm_ztsnr_v", DDPMSampler(), ZT_V, dict(steps=250)),
    ("ddpm_learned_var", DDPMSampler(), SL_EPS_LV, dict(steps=250, spacing="linspace")),
    ("ddim_eta1", DDIMSampler(eta=1.0), SL_EPS, dict(steps=250, spacing="linspace")),
    ("ddim_eta1_rf", DDIMSampler(), RF, dict(steps=250, eta=1.0)),
]


@pytest.mark.parametrize("case", STOCHASTIC, ids=[c[0] for c in STOCHASTIC])
def test_stochastic_samplers_recover_gaussian(case):
    _, sampler, make, kw = case
    obj = make()
    n = 20000
    x1 = start_noise(obj, n, standardize=False)
    x = sampler(gaussian_oracle(obj), obj, x1, generator=torch.Generator().manual_seed(1), **kw)
    mean_err, std_err = moment_errors(x)
    # 4 standard errors: mean sd/sqrt(n) (<= 0.057 for sd = 2), relative std sqrt(1/(2n)) (0.005) + discretization
    assert mean_err < 4 * 2.0 / n**0.5 and std_err < 0.03, (mean_err, std_err)


def test_fixed_generator_gives_identical_samples():
    obj = SL_EPS()
    x1 = start_noise(obj, 64)
    for sampler in (DDPMSampler(steps=20), DDIMSampler(steps=10, eta=0.7)):
        a = sampler(gaussian_oracle(obj), obj, x1, generator=torch.Generator().manual_seed(3))
        b = sampler(gaussian_oracle(obj), obj, x1, generator=torch.Generator().manual_seed(3))
        c = sampler(gaussian_oracle(obj), obj, x1, generator=torch.Generator().manual_seed(4))
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_ddim_eta0_ignores_generator():
    obj = SL_EPS()
    x1 = start_noise(obj, 32)
    a = DDIMSampler(steps=10)(gaussian_oracle(obj), obj, x1, generator=torch.Generator().manual_seed(0))
    b = DDIMSampler(steps=10)(gaussian_oracle(obj), obj, x1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_dpmpp_is_second_order_on_a_smooth_path():
    """Halving the step size divides the error by ~4 (2nd order) for DPM-Solver++(2M), by ~2 for DDIM."""
    obj = COS_V()
    x1 = start_noise(obj, 512)

    def err(sampler, n):
        return moment_errors(sampler(gaussian_oracle(obj), obj, x1, steps=n))[1]

    dpm = [err(DPMSolverPP2MSampler(), n) for n in (20, 40)]
    ddim = [err(DDIMSampler(), n) for n in (20, 40)]
    assert dpm[0] / dpm[1] > 2.8 and ddim[0] / ddim[1] < 2.2 and dpm[1] < ddim[1]


def test_rf_ddim_equals_euler():
    """On rectified flow the DDIM (exponential-integrator) step is exactly the Euler step in t."""
    obj = RF()
    x1 = start_noise(obj, 256)
    a = DDIMSampler(steps=7)(gaussian_oracle(obj), obj, x1)
    b = EulerSampler(steps=7)(gaussian_oracle(obj), obj, x1)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------- grids, NFE, options


def test_spacing_grids_match_diffusers_definitions():
    sched = ScaledLinearSchedule()
    T = 1000

    def idx(sp, n):
        return sp.indices(T, n).tolist()

    assert idx(LeadingSpacing(1), 50)[:3] == [981, 961, 941] and idx(LeadingSpacing(1), 50)[-1] == 1
    assert idx(LeadingSpacing(0), 10) == list(range(900, -1, -100))
    assert idx(TrailingSpacing(), 50)[:3] == [999, 979, 959] and idx(TrailingSpacing(), 50)[-1] == 19
    assert idx(TrailingSpacing(), 3) == [999, 666, 332]
    assert idx(LinspaceSpacing(), 4) == [999, 666, 333, 0]
    grid = TrailingSpacing().grid(sched, 4)
    assert grid.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]  # t = (k + 1)/T, then t = 0
    assert TrailingSpacing().grid(RectifiedFlowPath(), 4).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert LinspaceSpacing().grid(RectifiedFlowPath(), 4).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    torch.testing.assert_close(
        LinspaceSpacing(t_min=1e-3).grid(RectifiedFlowPath(), 3),
        torch.tensor([1.0, 0.5005, 0.001, 0.0], dtype=torch.float64),
    )
    with pytest.raises(ConfigError):
        LeadingSpacing().grid(RectifiedFlowPath(), 10)
    with pytest.raises(ConfigError):
        LeadingSpacing(steps_offset=1).grid(sched, 1000)  # would index T
    with pytest.raises(ConfigError):
        TrailingSpacing().grid(sched, 1001)


def test_samplers_evaluate_discrete_schedules_on_grid_points_only():
    obj = SL_EPS()
    T = obj.schedule.num_timesteps
    cases = [
        (EulerSampler(), dict(steps=13)),
        (HeunSampler(), dict(steps=9)),
        (DPMSolverPP2MSampler(), dict(steps=11)),
        (DDIMSampler(), dict(steps=17, spacing="leading")),
        (DDPMSampler(), dict(steps=7, spacing="linspace")),
    ]
    for sampler, kw in cases:
        calls = []
        out = sampler.sample(gaussian_oracle(obj, calls), obj, start_noise(obj, 8), **kw)
        t = torch.cat(calls).double()
        assert torch.allclose(t * T, (t * T).round(), atol=1e-4), type(sampler).__name__
        assert out.nfe == len(calls) == sampler.nfe(kw["steps"])


def test_options_and_overrides():
    s = DDIMSampler(steps=5, eta=0.0)
    assert s.nfe() == 5 and s.nfe(8) == 8 and HeunSampler(steps=10).nfe() == 19 and Dopri5Sampler().nfe() is None
    assert DDPMSampler().nfe() is None  # None = all T steps of the schedule
    with pytest.raises(ConfigError, match="unknown"):
        s(gaussian_oracle(SL_EPS()), SL_EPS(), torch.zeros(2, 2, 1, 1), etaa=1.0)
    with pytest.raises(ConfigError, match="spacing"):
        s(gaussian_oracle(SL_EPS()), SL_EPS(), torch.zeros(2, 2, 1, 1), spacing="middle")
    with pytest.raises(ConfigError):
        DDPMSampler(variance="medium")
    with pytest.raises(ConfigError):
        DDPMSampler()(gaussian_oracle(RF()), RF(), torch.zeros(2, 2, 1, 1))  # continuous path needs steps
    # per-call override changes the result; the default is untouched (stateless)
    obj = SL_EPS()
    x1 = start_noise(obj, 16)
    a = s(gaussian_oracle(obj), obj, x1)
    b = s(gaussian_oracle(obj), obj, x1, steps=3, spacing=LeadingSpacing(1))
    c = s(gaussian_oracle(obj), obj, x1)
    assert not torch.equal(a, b) and torch.equal(a, c) and s.defaults["steps"] == 5
