"""FeatureMetric classes over one feature store: built from config or by name they give the same numbers,
and a new metric is a subclass, with no change to GenerativeMetrics."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from latentgen.errors import ConfigError
from latentgen.metrics.feature_metrics import (
    FID,
    KID,
    DensityCoverage,
    FeatureMetric,
    FeatureSet,
    InceptionScore,
    PrecisionRecall,
)
from latentgen.metrics.generative_metrics import GenerativeMetrics


def _features(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(60, 8, generator=g)
    fake = torch.randn(50, 8, generator=g) * 1.2 + 0.1
    logits = torch.randn(50, 5, generator=g)
    return real, fake, logits


def _run(metrics, **kw) -> dict[str, float]:
    real, fake, logits = _features()
    gm = GenerativeMetrics(None, metrics=metrics, **kw)
    gm.update_features(real, real=True)
    gm.update_features(fake, real=False, logits=logits)
    return gm.compute()


def test_instances_equal_the_name_shorthand():
    by_name = _run(["fid", "kid", "prc", "density_coverage", "is"], kid_subset_size=20, kid_subsets=7, is_splits=4)
    by_class = _run([FID(), KID(subset_size=20, subsets=7), PrecisionRecall(), DensityCoverage(), InceptionScore(4)])
    assert by_name == by_class
    assert set(by_name) == {"num_real", "num_fake", "fid", "kid_mean", "kid_std", "kid_subset_size", "precision",
                            "recall", "density", "coverage", "is_mean", "is_std"}  # fmt: skip


def test_a_mapping_from_config_and_settings_in_metadata():
    gm = GenerativeMetrics(None, metrics={"prc": PrecisionRecall(k=4), "fid": FID()})
    assert gm.metric_names == ("prc", "fid")
    assert gm.metadata()["metrics"] == {"prc": {"k": 4}, "fid": {}}
    with pytest.raises(ConfigError, match="set them on the metrics"):
        GenerativeMetrics(None, metrics=[FID()], kid_subset_size=10)
    with pytest.raises(ConfigError, match="FeatureMetric"):
        GenerativeMetrics(None, metrics=[FID(), object()])


class MeanShift(FeatureMetric):
    """A metric the library does not know: the distance between the feature means."""

    name = "mean_shift"
    label = "mean shift"

    def __init__(self, power: int = 1) -> None:
        self.power = power

    def compute(self, features: FeatureSet) -> dict[str, float]:
        shift = (features.real.mean(0) - features.fake.mean(0)).norm()
        return {"mean_shift": float(shift**self.power)}

    def settings(self) -> dict[str, Any]:
        return {"power": self.power}


def test_a_new_metric_is_a_subclass():
    real, fake, _ = _features()
    out = _run([MeanShift(power=2), FID()])
    assert out["mean_shift"] == pytest.approx(float((real.mean(0) - fake.mean(0)).norm() ** 2))
    assert out["fid"] == _run(["fid"])["fid"]


def test_a_metric_that_needs_logits_is_refused_for_an_extractor_without_them():
    from unittest import mock

    no_logits = mock.Mock(has_logits=False, weights_label="test weights")
    no_logits.name = "test-extractor"
    with pytest.raises(ConfigError, match="Inception Score needs logits.*test-extractor"):
        GenerativeMetrics(no_logits, metrics=[FID(), InceptionScore()])
    GenerativeMetrics(no_logits, metrics=[FID(), MeanShift()])  # no logits needed
