"""conf/metrics/: each option is one FeatureMetric, chosen by name, that a stored config may build; the
settings in the files are the classes' defaults, so a config-chosen metric equals the name shorthand."""

from __future__ import annotations

import inspect

import pytest
from omegaconf import OmegaConf

from latentgen.config import check_targets, instantiate
from latentgen.metrics.feature_metrics import FeatureMetric
from tests.helpers import CONF, compose_config, group_options


@pytest.mark.parametrize("option", group_options("metrics"))
def test_each_option_is_one_metric_named_like_its_file(option):
    from hydra.utils import get_class

    cfg = OmegaConf.load(CONF / "metrics" / f"{option}.yaml")
    assert list(cfg) == [option]  # the group's entries are keyed by name: metrics.<name>
    node = cfg[option]
    check_targets(node)  # FeatureMetric is a safe base
    cls = get_class(node._target_)
    assert issubclass(cls, FeatureMetric) and cls.name == option
    params = inspect.signature(cls.__init__).parameters
    settings = {k: v for k, v in node.items() if k != "_target_"}
    assert all(params[k].default == v for k, v in settings.items()), (option, settings)


def test_evaluate_composes_the_default_metrics_and_a_chosen_list():
    cfg = compose_config(["ckpt=x.ckpt"], config_name="evaluate")
    assert list(cfg.metrics) == ["fid", "kid", "prc", "density_coverage"]
    cfg = compose_config(["ckpt=x.ckpt", "metrics=[fid,is]", "metrics.is.splits=3"], config_name="evaluate")
    built = instantiate(cfg.metrics)
    assert [m.name for m in built.values()] == ["fid", "is"] and built["is"].splits == 3


def test_the_f_sweep_evaluation_takes_its_metrics_from_the_group():
    cfg = compose_config(["experiment=f_sweep"])
    node = cfg.callbacks.generative_eval.metrics
    assert list(node) == ["fid", "prc", "density_coverage"]
    assert all(isinstance(m, FeatureMetric) for m in instantiate(node).values())
