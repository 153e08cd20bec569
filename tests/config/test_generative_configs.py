"""conf/objective/*.yaml and conf/sampler/*.yaml compose through Hydra and instantiate the right objects."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from latentgen.generative import (
    DDIMSampler,
    EpsPrediction,
    LogitNormalTime,
    MinSNRWeighting,
    Objective,
    RectifiedFlowPath,
    Sampler,
    ScaledLinearSchedule,
    UniformTime,
    VelocityPrediction,
    VPrediction,
    X0Prediction,
)

CONF = Path(__file__).resolve().parents[2] / "conf"
OBJECTIVES = sorted(p.stem for p in (CONF / "objective").glob("*.yaml"))
SAMPLERS = sorted(p.stem for p in (CONF / "sampler").glob("*.yaml"))


def _compose(group: str, name: str):
    # +schedule first: an objective interpolates ${schedule} and may select its own (rectified_flow).
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(overrides=["+schedule=scaled_linear", f"+{group}={name}"])[group]


def test_expected_configs_exist():
    assert set(OBJECTIVES) >= {
        "ddpm_eps",
        "ddpm_v",
        "ddpm_x0",
        "ddpm_eps_learned_var",
        "ddpm_v_ztsnr",
        "ddpm_eps_minsnr",
        "rectified_flow",
        "rectified_flow_uniform",
    }
    assert set(SAMPLERS) >= {"ddpm", "ddim", "euler", "heun", "dopri5", "dpmpp_2m"}


@pytest.mark.parametrize("name", OBJECTIVES)
def test_objective_configs_instantiate_and_run(name):
    cfg = _compose("objective", name)
    assert "learn_variance" in cfg  # other groups interpolate ${objective.learn_variance}
    obj = instantiate(cfg)
    assert isinstance(obj, Objective) and obj.learn_variance == cfg.learn_variance
    C = 2
    x0 = torch.randn(4, C, 4, 4)
    out_c = 2 * C if obj.learn_variance else C
    model = lambda x, t: torch.zeros(x.shape[0], out_c, *x.shape[2:])  # noqa: E731
    loss, log = obj.loss(model, x0, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss.item() > 0


def test_objective_configs_wire_the_right_classes():
    ztsnr = instantiate(_compose("objective", "ddpm_v_ztsnr"))
    assert ztsnr.schedule.zero_terminal_snr and isinstance(ztsnr.prediction, VPrediction)
    rf = instantiate(_compose("objective", "rectified_flow"))
    assert isinstance(rf.schedule, RectifiedFlowPath) and isinstance(rf.prediction, VelocityPrediction)
    assert isinstance(rf.time_sampler, LogitNormalTime)
    assert isinstance(instantiate(_compose("objective", "rectified_flow_uniform")).time_sampler, UniformTime)
    eps = instantiate(_compose("objective", "ddpm_eps"))
    assert isinstance(eps.schedule, ScaledLinearSchedule) and isinstance(eps.prediction, EpsPrediction)
    assert eps.time_sampler.num_timesteps == eps.schedule.num_timesteps == 1000 and not eps.learn_variance
    assert isinstance(instantiate(_compose("objective", "ddpm_x0")).prediction, X0Prediction)
    assert isinstance(instantiate(_compose("objective", "ddpm_eps_minsnr")).weighting, MinSNRWeighting)
    assert instantiate(_compose("objective", "ddpm_eps_learned_var")).learn_variance


@pytest.mark.parametrize("name", SAMPLERS)
def test_sampler_configs_instantiate_and_sample(name):
    sampler = instantiate(_compose("sampler", name))
    assert isinstance(sampler, Sampler)
    obj = instantiate(_compose("objective", "rectified_flow" if name in ("euler", "heun", "dopri5") else "ddpm_eps"))
    noise = torch.randn(2, 2, 2, 2)
    steps = None if name == "dopri5" else 4
    out = sampler.sample(lambda x, t: 0.1 * x, obj.parameterization, noise, steps=steps)
    assert out.samples.shape == noise.shape and torch.isfinite(out.samples).all()
    assert sampler.nfe(steps) in (None, out.nfe)


def test_ddim_config_defaults():
    cfg = _compose("sampler", "ddim")
    s = instantiate(cfg)
    assert isinstance(s, DDIMSampler) and cfg.steps == 50 and cfg.eta == 0.0 and cfg.spacing == "trailing"
