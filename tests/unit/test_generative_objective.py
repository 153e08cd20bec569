"""Objective: oracle networks give zero loss, learned-variance VLB, validation, reproducibility."""

from __future__ import annotations

import math

import pytest
import torch

from latentgen.errors import ConfigError
from latentgen.generative.objective import Objective, gaussian_nll, interpolate_log_variance, normal_kl
from latentgen.generative.predictions import EpsPrediction, VelocityPrediction, VPrediction, X0Prediction
from latentgen.generative.schedules import CosineSchedule, LinearSchedule, RectifiedFlowPath, ScaledLinearSchedule
from latentgen.generative.time_samplers import LogitNormalTime, UniformDiscreteTime, UniformTime
from latentgen.generative.weighting import MinSNRWeighting, UnitWeighting
from latentgen.randomness import BatchRandomness

X_STAR = torch.tensor([0.7, -1.2, 0.3, 2.0]).view(1, 4, 1, 1)  # single-point data distribution


def _objective(schedule, prediction, **kw):
    ts = UniformDiscreteTime(schedule.num_timesteps) if schedule.is_discrete else LogitNormalTime()
    return Objective(schedule, prediction, ts, **kw)


def _point_oracle(obj, learn_variance=False):
    """For data = delta(x*), x0_hat = x* and eps_hat = (x_t - alpha x*)/sigma are exact."""

    def model_fn(x_t, t):
        s = obj.schedule(t).reshape_like(x_t)
        x0 = X_STAR.expand_as(x_t)
        eps = (x_t - s.alpha_t * x0) / s.sigma_t
        out = obj.prediction.target(x0, eps, s)
        return torch.cat([out, torch.zeros_like(out)], 1) if learn_variance else out

    return model_fn


CASES = {
    "ddpm_eps": lambda: _objective(ScaledLinearSchedule(), EpsPrediction()),
    "ddpm_x0": lambda: _objective(ScaledLinearSchedule(), X0Prediction()),
    "ddpm_v": lambda: _objective(ScaledLinearSchedule(), VPrediction()),
    "ddpm_v_ztsnr": lambda: _objective(ScaledLinearSchedule(zero_terminal_snr=True), VPrediction()),
    "ddpm_eps_minsnr": lambda: _objective(LinearSchedule(), EpsPrediction(), weighting=MinSNRWeighting(5.0)),
    "rf_velocity": lambda: _objective(RectifiedFlowPath(), VelocityPrediction()),
    "rf_x0_uniform": lambda: Objective(RectifiedFlowPath(), X0Prediction(), UniformTime(0.0, 1.0)),
    "rf_v_minsnr": lambda: _objective(RectifiedFlowPath(), VPrediction(), weighting=MinSNRWeighting()),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_oracle_gives_zero_loss(name):
    obj = CASES[name]()
    x0 = X_STAR.expand(64, 4, 3, 3).clone()
    loss, log = obj.loss(_point_oracle(obj), x0, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and loss.item() < 1e-8, (name, loss.item())
    assert set(log) >= {"loss", "mse", "loss_simple"} and all(v.ndim == 0 for v in log.values())
    # and a wrong model does not
    bad, _ = obj.loss(lambda x, t: torch.zeros_like(x), x0, generator=torch.Generator().manual_seed(0))
    assert bad.item() > 1e-3


def test_loss_is_reproducible_and_uses_given_noise_and_t():
    obj = CASES["ddpm_v"]()
    x0 = torch.randn(8, 4, 2, 2)
    model = lambda x, t: 0.5 * x  # noqa: E731
    a = obj.loss(model, x0, generator=torch.Generator().manual_seed(5))[0]
    b = obj.loss(model, x0, generator=torch.Generator().manual_seed(5))[0]
    c = obj.loss(model, x0, generator=torch.Generator().manual_seed(6))[0]
    assert a.item() == b.item() != c.item()
    noise, t = torch.randn(8, 4, 2, 2), torch.full((8,), 0.5)
    seen = {}

    def spy(x, tt):
        seen["x"], seen["t"] = x, tt
        return torch.zeros_like(x)

    loss, _ = obj.loss(spy, x0, noise=noise, t=t)
    s = obj.schedule(t).reshape_like(x0)
    torch.testing.assert_close(seen["x"], s.alpha_t * x0 + s.sigma_t * noise)
    assert torch.equal(seen["t"], t)
    # mean over C,H,W then batch, in fp32, target v
    target = s.alpha_t * noise - s.sigma_t * x0
    torch.testing.assert_close(loss, (target**2).mean())


def test_weighting_is_per_sample():
    obj = _objective(ScaledLinearSchedule(), EpsPrediction(), weighting=MinSNRWeighting(gamma=5.0))
    x0, noise = torch.randn(4, 2, 2, 2), torch.randn(4, 2, 2, 2)
    t = torch.tensor([0.002, 0.1, 0.5, 1.0])
    loss, _ = obj.loss(lambda x, tt: torch.zeros_like(x), x0, noise=noise, t=t)
    s = obj.schedule(t)
    w = s.snr.clamp(max=5.0) / s.snr
    torch.testing.assert_close(loss, (w * (noise**2).mean(dim=(1, 2, 3))).mean())


def test_offset_noise_adds_per_channel_constant():
    obj = _objective(ScaledLinearSchedule(), EpsPrediction(), offset_noise=1.0)
    x0 = torch.zeros(256, 2, 4, 4)
    seen = {}

    def spy(x, t):
        seen["x"] = x
        return torch.zeros_like(x)

    obj.loss(spy, x0, generator=torch.Generator().manual_seed(0))
    # x0 = 0 -> x_t = sigma * eps; the per-(sample, channel) spatial mean of eps has variance 1/16 + 1
    s = obj.schedule(obj.time_sampler.sample(256, "cpu", torch.Generator().manual_seed(0))).reshape_like(x0)
    eps_mean = (seen["x"] / s.sigma_t).mean(dim=(2, 3))
    assert 0.7 < eps_mean.var().item() < 1.5
    obj0 = _objective(ScaledLinearSchedule(), EpsPrediction())
    obj0.loss(spy, x0, generator=torch.Generator().manual_seed(0))
    assert (seen["x"] / s.sigma_t).mean(dim=(2, 3)).var().item() < 0.15


def test_draw_order_does_not_depend_on_the_offset_noise_option():
    """t, eps and the offset are always drawn (in that order), so the offset option changes only what is
    done with them: eps(offset 0.3) - eps(offset 0) is a per-(sample, channel) constant, and t is the same."""
    plain = _objective(ScaledLinearSchedule(), EpsPrediction())
    with_offset = _objective(ScaledLinearSchedule(), EpsPrediction(), offset_noise=0.3)
    t0, eps0 = plain.draw(BatchRandomness.for_step(1, 2, 6), (2, 4, 4))
    t1, eps1 = with_offset.draw(BatchRandomness.for_step(1, 2, 6), (2, 4, 4))
    assert torch.equal(t0, t1)
    diff = eps1 - eps0  # (6, 2, 4, 4)
    assert torch.allclose(diff, diff[..., :1, :1].expand_as(diff), atol=1e-6) and diff.abs().max() > 0


# ----------------------------------------------------------------------------------- learned variance


def test_interpolated_log_variance_endpoints():
    lb, lbt = torch.tensor(-3.0), torch.tensor(-5.0)
    assert interpolate_log_variance(torch.tensor(1.0), lb, lbt).item() == -3.0  # frac = 1 -> log beta
    assert interpolate_log_variance(torch.tensor(-1.0), lb, lbt).item() == -5.0  # frac = 0 -> log beta_tilde
    assert interpolate_log_variance(torch.tensor(0.0), lb, lbt).item() == -4.0


def test_gaussian_kl_and_nll():
    m, lv = torch.randn(10), torch.randn(10)
    torch.testing.assert_close(normal_kl(m, lv, m, lv), torch.zeros(10))
    assert bool((normal_kl(m, lv, m + 0.1, lv) > 0).all()) and bool((normal_kl(m, lv, m, lv + 0.3) > 0).all())
    x = torch.randn(10)
    ref = -torch.distributions.Normal(m, torch.exp(0.5 * lv)).log_prob(x)
    torch.testing.assert_close(gaussian_nll(x, m, lv), ref)


def _learned_var_objective():
    return Objective(CosineSchedule(num_timesteps=50), EpsPrediction(), UniformDiscreteTime(50), learn_variance=True)


def test_vlb_gradient_reaches_only_the_variance_and_optimum_is_posterior():
    obj = _learned_var_objective()
    B = 6
    x0, noise = torch.randn(B, 2, 2, 2), torch.randn(B, 2, 2, 2)
    t = obj.schedule.index_to_t(torch.tensor([0, 1, 5, 20, 40, 49]))
    raw = torch.zeros(B, 4, 2, 2, requires_grad=True)
    with_vlb = Objective(obj.schedule, obj.prediction, obj.time_sampler, learn_variance=True, vlb_weight=1.0)
    no_vlb = Objective(obj.schedule, obj.prediction, obj.time_sampler, learn_variance=True, vlb_weight=0.0)
    loss, log = with_vlb.loss(lambda x, tt: raw, x0, noise=noise, t=t)
    loss0, _ = no_vlb.loss(lambda x, tt: raw, x0, noise=noise, t=t)
    (g,) = torch.autograd.grad(loss - loss0, raw)  # gradient of the VLB term alone
    assert g[:, :2].abs().max().item() == 0.0, "the VLB term must not reach the mean (stop-gradient)"
    assert g[:, 2:].abs().max().item() > 0.0
    # the exact eps and v = -1 (beta_tilde) make the KL terms (k > 0) vanish
    s = obj.schedule(t).reshape_like(x0)
    x_t = s.alpha_t * x0 + s.sigma_t * noise
    pred = noise.clone()
    v = -torch.ones_like(noise)
    vlb = obj.vlb_terms(pred, v, x0, x_t, t)
    assert vlb[1:].abs().max().item() < 1e-5
    assert vlb[0].item() != 0  # k = 0: Gaussian decoder NLL (a density), not a KL
    assert "vlb" in log and loss.item() > log["loss_simple"].item() - 1e-6


def test_learned_variance_needs_discrete_schedule_and_grid_times():
    with pytest.raises(ConfigError, match="discrete"):
        Objective(RectifiedFlowPath(), VelocityPrediction(), UniformTime(), learn_variance=True)
    with pytest.raises(ConfigError, match="UniformDiscreteTime"):
        Objective(ScaledLinearSchedule(), EpsPrediction(), UniformTime(), learn_variance=True)
    with pytest.raises(ConfigError, match="num_timesteps"):
        Objective(ScaledLinearSchedule(), EpsPrediction(), UniformDiscreteTime(500))
    with pytest.raises(ConfigError, match="EpsPrediction"):
        Objective(ScaledLinearSchedule(zero_terminal_snr=True), EpsPrediction(), UniformDiscreteTime(1000))
    obj = _learned_var_objective()
    with pytest.raises(ConfigError, match="channels"):
        obj.model_outputs(torch.zeros(2, 3, 4, 4))
    pred, v = obj.model_outputs(torch.arange(4.0).view(1, 4, 1, 1))
    assert pred.flatten().tolist() == [0.0, 1.0] and v.flatten().tolist() == [2.0, 3.0]
    assert _objective(ScaledLinearSchedule(), EpsPrediction()).model_outputs(pred)[1] is None


def test_hybrid_loss_scale_is_lambda_T():
    obj = _learned_var_objective()
    x0, noise = torch.randn(4, 2, 2, 2), torch.randn(4, 2, 2, 2)
    t = obj.schedule.index_to_t(torch.tensor([3, 7, 11, 30]))
    raw = torch.randn(4, 4, 2, 2)
    loss, log = obj.loss(lambda x, tt: raw, x0, noise=noise, t=t)
    expected = log["loss_simple"] + obj.vlb_weight * obj.schedule.num_timesteps * log["vlb"]
    torch.testing.assert_close(loss, expected)
    assert math.isfinite(loss.item())


def test_unit_weighting_default():
    obj = Objective(ScaledLinearSchedule(), EpsPrediction(), UniformDiscreteTime())
    assert isinstance(obj.weighting, UnitWeighting)
