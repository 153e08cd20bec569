"""conf/extractor/*.yaml: every option names an existing class or factory and only keys it takes."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf" / "extractor"
OPTIONS = sorted(p.stem for p in CONF.glob("*.yaml"))


def test_expected_options_exist():
    assert {"inception", "fid_helper", "dataset_classifier", "dinov2"} <= set(OPTIONS)


@pytest.mark.parametrize("option", OPTIONS)
def test_extractor_config_matches_its_class(option):
    from hydra.utils import get_object

    from latentgen.config import target_refusal

    cfg = OmegaConf.load(CONF / f"{option}.yaml")
    target = get_object(cfg._target_)
    params = inspect.signature(target.__init__ if isinstance(target, type) else target).parameters
    assert target_refusal(cfg._target_) is None, option  # a stored config may build it
    keys = [k for k in cfg if not str(k).startswith("_")]
    assert keys and all(k in params for k in keys), (option, keys, list(params))
    # weights are never downloaded: every option starts without a path and the class raises a clear error
    assert all(cfg[k] is None for k in keys if k.endswith(("_path", "_dir")))
