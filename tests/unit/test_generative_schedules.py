"""Invariants of schedules, predictions, time samplers and loss weights (no golden numbers)."""

from __future__ import annotations

import math

import pytest
import torch

from latentgen.errors import ConfigError
from latentgen.generative.predictions import EpsPrediction, VelocityPrediction, VPrediction, X0Prediction
from latentgen.generative.schedules import (
    CosinePath,
    CosineSchedule,
    LinearSchedule,
    RectifiedFlowPath,
    ScaledLinearSchedule,
)
from latentgen.generative.time_samplers import LogitNormalTime, UniformDiscreteTime, UniformTime, shift_time
from latentgen.generative.weighting import MinSNRWeighting, UnitWeighting

DISCRETE = {
    "scaled_linear": lambda **kw: ScaledLinearSchedule(**kw),
    "linear": lambda **kw: LinearSchedule(**kw),
    "cosine": lambda **kw: CosineSchedule(**kw),
}
SCHEDULES = {
    **{k: v for k, v in DISCRETE.items()},
    "scaled_linear_ztsnr": lambda: ScaledLinearSchedule(zero_terminal_snr=True),
    "rectified_flow": lambda: RectifiedFlowPath(),
    "cosine_path": lambda: CosinePath(),
}
PREDICTIONS = [EpsPrediction(), X0Prediction(), VPrediction(), VelocityPrediction()]


def _times(schedule, n: int = 64) -> torch.Tensor:
    """Interior times (B,) where every conversion is defined (0 < sigma, 0 < alpha)."""
    if schedule.is_discrete:
        k = torch.linspace(0, schedule.num_timesteps - 2, n).round().long()
        return schedule.index_to_t(k)
    return torch.linspace(0.01, 0.99, n)


# ----------------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_endpoints_and_monotone_snr(name):
    sched = SCHEDULES[name]()
    s0 = sched(torch.zeros(1))
    assert s0.alpha_t.item() == pytest.approx(1.0, abs=1e-7) and s0.sigma_t.item() == pytest.approx(0.0, abs=1e-7)
    s_first = sched(torch.tensor([sched.t_min if sched.is_discrete else 1e-4]))
    assert s_first.alpha_t.item() > 0.99 and s_first.sigma_t.item() < 0.1  # first grid point close to data
    s1 = sched(torch.ones(1))
    assert s1.sigma_t.item() > 0.99 and s1.alpha_t.item() < 0.05
    t = torch.linspace(0.001, 1.0, 997, dtype=torch.float64)
    snr = sched.snr(t)
    assert bool((snr[1:] < snr[:-1]).all()), "SNR must decrease strictly with t"


def test_rectified_flow_values():
    s = RectifiedFlowPath()(torch.tensor([0.0, 0.25, 1.0]))
    torch.testing.assert_close(s.alpha_t, torch.tensor([1.0, 0.75, 0.0]))
    torch.testing.assert_close(s.sigma_t, torch.tensor([0.0, 0.25, 1.0]))
    assert bool((s.d_alpha_t == -1).all()) and bool((s.d_sigma_t == 1).all())


@pytest.mark.parametrize("name", sorted(DISCRETE))
def test_discrete_grid_is_exact(name):
    sched = DISCRETE[name]()
    k = torch.arange(sched.num_timesteps)
    t = sched.index_to_t(k)  # float32 (k+1)/T
    s = sched(t)
    torch.testing.assert_close(s.alpha_t.double() ** 2, sched.alphas_cumprod, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(s.sigma_t.double() ** 2, 1 - sched.alphas_cumprod, atol=1e-6, rtol=1e-6)
    assert torch.equal(sched.t_to_index(t), k)
    # VP everywhere, also off-grid (angle interpolation)
    tt = torch.rand(1000, dtype=torch.float64)
    so = sched(tt)
    torch.testing.assert_close(so.alpha_t**2 + so.sigma_t**2, torch.ones_like(tt))
    # beta_tilde (Ho et al. Eq. 7) and its first entry
    assert sched.beta_tilde[0] == 0 and bool((sched.beta_tilde[1:] < sched.betas[1:]).all())


@pytest.mark.parametrize("name", sorted(DISCRETE))
def test_zero_terminal_snr(name):
    base, zt = DISCRETE[name](), DISCRETE[name](zero_terminal_snr=True)
    assert zt.alphas_cumprod[-1].item() == 0.0
    assert zt.alphas_cumprod[0].item() == pytest.approx(base.alphas_cumprod[0].item(), rel=1e-12)
    assert zt.betas[-1].item() == pytest.approx(1.0)
    assert zt(torch.ones(1)).alpha_t.abs().item() < 1e-7
    assert bool((zt.alphas_cumprod[1:] < zt.alphas_cumprod[:-1]).all())


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_derivatives_match_finite_differences(name):
    sched = SCHEDULES[name]()
    if sched.is_discrete:  # mid-segment points: the interpolation is smooth there
        T = sched.num_timesteps
        t = (torch.arange(3, T - 3, 37, dtype=torch.float64) + 0.5) / T
        h = 0.1 / T
    else:
        t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
        h = 1e-6
    s, sp, sm = sched(t), sched(t + h), sched(t - h)
    torch.testing.assert_close(s.d_alpha_t, (sp.alpha_t - sm.alpha_t) / (2 * h), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(s.d_sigma_t, (sp.sigma_t - sm.sigma_t) / (2 * h), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["scaled_linear", "cosine", "rectified_flow", "cosine_path"])
def test_t_from_log_snr_inverts(name):
    sched = SCHEDULES[name]()
    t = _times(sched).double()
    torch.testing.assert_close(sched.t_from_log_snr(sched.log_snr(t)), t, atol=1e-6, rtol=1e-6)


def test_cosine_schedule_clips_betas():
    sched = CosineSchedule(num_timesteps=100, max_beta=0.999)
    assert sched.betas.max().item() <= 0.999 + 1e-12
    with pytest.raises(ConfigError):
        from latentgen.generative.schedules import DiscreteSchedule

        DiscreteSchedule([0.1, 0.0, 0.2])


# ----------------------------------------------------------------------------------- predictions


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("pred", PREDICTIONS, ids=lambda p: p.name)
def test_prediction_round_trip(name, pred):
    sched = SCHEDULES[name]()
    t = _times(sched).double()
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(t.shape[0], 3, 2, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(t.shape[0], 3, 2, 2, generator=g, dtype=torch.float64)
    s = sched(t).reshape_like(x0)
    x_t = s.alpha_t * x0 + s.sigma_t * eps
    out = pred.target(x0, eps, s)
    x0_hat, eps_hat = pred.to_x0_eps(out, x_t, s)
    torch.testing.assert_close(x0_hat, x0, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(eps_hat, eps, atol=1e-8, rtol=1e-8)
    # the ODE drift is the time derivative of the interpolant at fixed (x0, eps)
    torch.testing.assert_close(pred.velocity(out, x_t, s), s.d_alpha_t * x0 + s.d_sigma_t * eps, atol=1e-8, rtol=1e-8)


def test_v_and_velocity_definitions():
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    x0, eps = torch.randn(2, 1, 1, 1, dtype=torch.float64), torch.randn(2, 1, 1, 1, dtype=torch.float64)
    sl = ScaledLinearSchedule()
    s = sl(t).reshape_like(x0)
    abar = s.alpha_t**2
    # Salimans & Ho 2022 (docs/diffusion.md): v = sqrt(abar) eps - sqrt(1 - abar) x0
    torch.testing.assert_close(VPrediction().target(x0, eps, s), abar.sqrt() * eps - (1 - abar).sqrt() * x0)
    rf = RectifiedFlowPath()(t).reshape_like(x0)
    torch.testing.assert_close(VelocityPrediction().target(x0, eps, rf), eps - x0)
    # v and velocity agree on the VP cosine path up to the constant d(phi)/dt = pi/2
    cp = CosinePath()(t).reshape_like(x0)
    u, v = VelocityPrediction().target(x0, eps, cp), VPrediction().target(x0, eps, cp)
    torch.testing.assert_close(u, (math.pi / 2) * v)


def test_eps_prediction_rejects_zero_terminal_alpha():
    with pytest.raises(ConfigError, match="alpha"):
        EpsPrediction().check_schedule(ScaledLinearSchedule(zero_terminal_snr=True))
    with pytest.raises(ConfigError):
        EpsPrediction().check_schedule(RectifiedFlowPath())
    VPrediction().check_schedule(ScaledLinearSchedule(zero_terminal_snr=True))  # fine


# ----------------------------------------------------------------------------------- weights


def test_min_snr_weights_match_formulas():
    sched = ScaledLinearSchedule()
    t = _times(sched).double()
    s = sched(t)
    snr, g = s.snr, 5.0
    w = MinSNRWeighting(gamma=g)
    torch.testing.assert_close(w(s, EpsPrediction()), snr.clamp(max=g) / snr)
    torch.testing.assert_close(w(s, VPrediction()), snr.clamp(max=g) / (snr + 1))
    torch.testing.assert_close(w(s, X0Prediction()), snr.clamp(max=g))
    # RF velocity: min(snr, g) t^2 = min((1-t)^2, g t^2)
    rf = RectifiedFlowPath()(t)
    torch.testing.assert_close(w(rf, VelocityPrediction()), torch.minimum((1 - t) ** 2, g * t**2))
    assert torch.equal(UnitWeighting()(s, EpsPrediction()), torch.ones_like(t))


def test_min_snr_weights_are_one_weighting_in_x0_space():
    """The weight times the prediction-space error equals min(snr, g) times the x0-space error."""
    g = torch.Generator().manual_seed(3)
    for sched in (ScaledLinearSchedule(), RectifiedFlowPath()):
        t = _times(sched, 8).double()
        s = sched(t).reshape_like(torch.zeros(8, 1, 1, 1))
        x0 = torch.randn(8, 1, 1, 1, generator=g, dtype=torch.float64)
        eps = torch.randn(8, 1, 1, 1, generator=g, dtype=torch.float64)
        x_t = s.alpha_t * x0 + s.sigma_t * eps
        for pred in PREDICTIONS:
            if pred.name == "eps" and not sched.is_discrete:
                continue
            out = pred.target(x0, eps, s)
            d = 1e-3 * torch.randn(out.shape, generator=g, dtype=torch.float64)
            x0_err = pred.to_x0_eps(out + d, x_t, s)[0] - x0
            lhs = pred.min_snr_weight(s, 5.0) * d**2
            rhs = s.snr.clamp(max=5.0) * x0_err**2
            torch.testing.assert_close(lhs, rhs, rtol=1e-6, atol=1e-14)


# ----------------------------------------------------------------------------------- time samplers


def test_shift_map():
    t = torch.linspace(0, 1, 101)
    for shift in (0.5, 1.0, 3.0):
        y = shift_time(t, shift)
        assert y[0] == 0 and y[-1] == pytest.approx(1.0)
        assert bool((y[1:] > y[:-1]).all())
    assert bool((shift_time(t, 3.0)[1:-1] > t[1:-1]).all())  # shift > 1 moves mass towards noise


def test_time_samplers_ranges_and_reproducibility():
    tss = (UniformTime(), UniformTime(0.2, 0.5, shift=2.0), LogitNormalTime(), LogitNormalTime(0.5, 1.5, shift=3.0))
    for ts in tss:
        a = ts.sample(4096, "cpu", torch.Generator().manual_seed(0))
        b = ts.sample(4096, "cpu", torch.Generator().manual_seed(0))
        assert a.shape == (4096,) and a.dtype == torch.float32 and torch.equal(a, b)
        assert bool(((a > 0) & (a < 1)).all())
    u = UniformTime(0.2, 0.5).sample(4096, "cpu", torch.Generator().manual_seed(0))
    assert u.min() >= 0.2 and u.max() <= 0.5
    ln = LogitNormalTime().sample(20000, "cpu", torch.Generator().manual_seed(0))
    assert abs(ln.mean().item() - 0.5) < 0.01  # symmetric around 1/2 for mean 0
    d = UniformDiscreteTime(10).sample(5000, "cpu", torch.Generator().manual_seed(0))
    assert set((d * 10).round().long().tolist()) == set(range(1, 11))
    assert UniformDiscreteTime.is_discrete and not UniformTime.is_discrete
    with pytest.raises(ConfigError):
        UniformTime(0.5, 0.2)
