"""conf/schedule/ is a config group of its own, independent of the prediction type: every schedule composes
with every objective, `schedule=cosine` works from the command line, and the default job keeps its betas."""

from __future__ import annotations

import pytest
import torch

from latentgen.config import instantiate
from latentgen.errors import ConfigError
from latentgen.generative import EpsPrediction, Objective
from latentgen.generative.schedules import CosineSchedule, RectifiedFlowPath, ScaledLinearSchedule
from tests.helpers import compose_config, group_options

SCHEDULES = group_options("schedule")
OBJECTIVES = group_options("objective")


def test_the_schedules_of_schedules_py_are_options():
    assert set(SCHEDULES) >= {
        "scaled_linear",
        "scaled_linear_ztsnr",
        "linear",
        "cosine",
        "rectified_flow",
        "cosine_path",
    }


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_schedule_composes_with_every_objective(schedule, objective):
    cfg = compose_config([f"objective={objective}", f"schedule={schedule}"])
    sched = instantiate(cfg.schedule)
    refused = (  # the pairs Objective refuses by design, with a ConfigError naming the fix
        (
            cfg.objective.prediction._target_.endswith("EpsPrediction")
            and float(sched(torch.ones(1, dtype=torch.float64)).alpha_t) < 1e-6  # alpha(1) = 0: no x0 from eps
        )
        or (cfg.objective.learn_variance and not sched.is_discrete)
    )
    if refused:
        with pytest.raises(ConfigError):
            instantiate(cfg.objective)
        return
    obj = instantiate(cfg.objective)
    assert isinstance(obj, Objective) and type(obj.schedule) is type(sched)
    if sched.is_discrete and obj.time_sampler.is_discrete:
        assert obj.time_sampler.num_timesteps == obj.schedule.num_timesteps
    x0 = torch.randn(2, 2, 4, 4)
    out_c = 4 if obj.learn_variance else 2
    loss, _ = obj.loss(
        lambda x, t: torch.zeros(x.shape[0], out_c, *x.shape[2:]), x0, generator=torch.Generator().manual_seed(0)
    )
    assert torch.isfinite(loss)


def test_schedule_cosine_from_the_command_line_gives_a_cosine_schedule():
    obj = instantiate(compose_config(["schedule=cosine"]).objective)
    assert isinstance(obj.schedule, CosineSchedule) and isinstance(obj.prediction, EpsPrediction)
    # T follows the schedule's override through the time sampler
    obj = instantiate(compose_config(["schedule=cosine", "schedule.num_timesteps=50"]).objective)
    assert obj.schedule.num_timesteps == obj.time_sampler.num_timesteps == 50


def test_objectives_select_their_schedule_and_the_cli_wins():
    assert isinstance(instantiate(compose_config(["objective=rectified_flow"]).objective).schedule, RectifiedFlowPath)
    assert instantiate(compose_config(["objective=ddpm_v_ztsnr"]).objective).schedule.zero_terminal_snr
    flow = instantiate(compose_config(["objective=rectified_flow", "schedule=cosine"]).objective)
    assert isinstance(flow.schedule, CosineSchedule)


def test_the_default_job_keeps_its_schedule():
    obj = instantiate(compose_config([]).objective)
    assert type(obj.schedule) is ScaledLinearSchedule and not obj.schedule.zero_terminal_snr
    before = ScaledLinearSchedule(num_timesteps=1000, beta_start=0.0015, beta_end=0.0195)  # the former inline node
    assert torch.equal(obj.schedule.betas, before.betas)
