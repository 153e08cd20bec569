"""Precision/recall (Kynkäänniemi et al. 2019): parity with torch-fidelity's prc, hand cases, errors."""

from __future__ import annotations

import pytest
import torch

from latentgen.errors import ConfigError
from latentgen.metrics import NotEnoughSamplesError
from latentgen.metrics.knn import knn_radii, precision_recall


def test_matches_torch_fidelity_prc_on_same_features():
    from torch_fidelity.metric_prc import prc_features_to_metric

    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 64, generator=g)
    fake = torch.randn(250, 64, generator=g) * 0.8 + 0.15
    ref = prc_features_to_metric(fake, real, verbose=False)  # torch-fidelity: input 1 generated, input 2 real
    ours = precision_recall(real, fake, k=3)
    assert ours["precision"] == pytest.approx(ref["precision"], abs=1e-6)
    assert ours["recall"] == pytest.approx(ref["recall"], abs=1e-6)
    assert 0.0 < ours["precision"] < 1.0 and 0.0 < ours["recall"] < 1.0
    # small blocks give the same answer
    small = precision_recall(real, fake, k=3, batch_size=64)
    assert small["precision"] == pytest.approx(ours["precision"]) and small["recall"] == pytest.approx(ours["recall"])


def test_radius_skips_the_point_itself():
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    # k=1: nearest other point; k=2: second nearest other point
    assert knn_radii(x, 1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert knn_radii(x, 2).tolist() == [3.0, 2.0, 3.0, 6.0]


def test_hand_cases():
    line = torch.arange(8, dtype=torch.float32).unsqueeze(1)  # 0..7, k=3 radii >= 3
    same = precision_recall(line, line.clone(), k=3)
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    far = precision_recall(line, line + 1000.0, k=3)
    assert far["precision"] == 0.0 and far["recall"] == 0.0
    # Fakes 0..3 (on the real manifold) and 100..103 (off it): precision 4/8. Fake radii (k=3) of 0..3 are
    # [3, 2, 2, 3], so their balls cover reals 0..6 but not 7 (distance 4 from fake 3): recall 7/8.
    half = torch.cat([line[:4], line[:4] + 100.0])
    res = precision_recall(line, half, k=3)
    assert res["precision"] == 0.5
    assert res["recall"] == 7 / 8


def test_fewer_than_k_plus_1_samples_is_a_clear_error():
    real, fake = torch.randn(3, 4), torch.randn(10, 4)
    with pytest.raises(NotEnoughSamplesError, match=r"k=3.*num_samples=3"):
        precision_recall(real, fake, k=3)
    assert issubclass(NotEnoughSamplesError, ConfigError) and issubclass(NotEnoughSamplesError, ValueError)
    with pytest.raises(ConfigError, match="dim"):
        precision_recall(torch.randn(10, 4), torch.randn(10, 5))
