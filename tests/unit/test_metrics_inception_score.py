"""Inception Score from logits: bounds 1 and K, parity with torch-fidelity."""

from __future__ import annotations

import pytest
import torch

from latentgen.metrics import NotEnoughSamplesError
from latentgen.metrics.isc import inception_score


def test_uniform_predictions_give_1():
    mean, std = inception_score(torch.zeros(100, 7))
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_confident_and_diverse_predictions_give_k():
    k, splits = 10, 5
    labels = torch.arange(k).repeat(splits * 3)  # every chunk of 30 holds each class 3 times
    logits = torch.full((len(labels), k), -1e4)
    logits[torch.arange(len(labels)), labels] = 1e4
    mean, std = inception_score(logits, splits=splits, shuffle=False)
    assert mean == pytest.approx(k, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)


def test_matches_torch_fidelity_isc():
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = torch.randn(230, 12) * 3
    ref = isc_features_to_metric(logits, splits=10, shuffle=True, rng_seed=2020)
    mean, std = inception_score(logits, splits=10, seed=2020)
    assert mean == pytest.approx(ref["inception_score_mean"], rel=1e-10)
    assert std == pytest.approx(ref["inception_score_std"], rel=1e-8)


def test_fewer_samples_than_splits():
    with pytest.raises(NotEnoughSamplesError, match="num_samples=4"):
        inception_score(torch.randn(4, 3), splits=10)
