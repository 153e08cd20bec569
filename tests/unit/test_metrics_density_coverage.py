"""Density and coverage (Naeem et al. 2020) on hand-made point sets with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentgen.metrics import NotEnoughSamplesError
from latentgen.metrics.knn import density_coverage

# Real points 0, 1, ..., 5 on a line (in 2-D). With k=1 every radius NND_1 is 1.
REAL = torch.tensor([[float(i), 0.0] for i in range(6)])


def _pts(*xs: float) -> torch.Tensor:
    return torch.tensor([[x, 0.0] for x in xs])


def test_one_fake_between_two_reals_and_one_far_away():
    # 0.5 is strictly inside the balls of 0 and 1; 10 is in none.
    res = density_coverage(REAL, _pts(0.5, 10.0), k=1)
    assert res["density"] == pytest.approx(2 / (1 * 2))  # eq. 3: 2 memberships / (k M)
    assert res["coverage"] == pytest.approx(2 / 6)  # eq. 4: balls of 0 and 1


def test_identical_sets_have_density_1_and_coverage_1():
    # Each fake sits on its real twin (distance 0 < 1); neighbours at distance exactly 1 are outside (strict <).
    res = density_coverage(REAL, REAL.clone(), k=1)
    assert res["density"] == pytest.approx(1.0)
    assert res["coverage"] == pytest.approx(1.0)


def test_crowded_fakes_give_density_above_1():
    res = density_coverage(REAL, _pts(0.9, 0.9, 0.9), k=1)  # each in the balls of 0 and 1
    assert res["density"] == pytest.approx(6 / 3)
    assert res["coverage"] == pytest.approx(2 / 6)


def test_k2_radii():
    # k=2 radii: [2, 1, 1, 1, 1, 2]; a fake at 2.5 is inside the balls of 2 and 3 only.
    res = density_coverage(REAL, _pts(2.5), k=2)
    assert res["density"] == pytest.approx(2 / (2 * 1))
    assert res["coverage"] == pytest.approx(2 / 6)


def test_matches_bruteforce_reference_on_random_sets():
    rng = np.random.default_rng(0)
    real, fake = rng.standard_normal((120, 8)), rng.standard_normal((90, 8)) * 1.3 + 0.2
    k = 5
    d_rr = np.linalg.norm(real[:, None] - real[None], axis=-1)
    radii = np.sort(d_rr, axis=1)[:, k]  # column 0 is the point itself
    d_rf = np.linalg.norm(real[:, None] - fake[None], axis=-1)
    inside = d_rf < radii[:, None]
    ours = density_coverage(torch.from_numpy(real), torch.from_numpy(fake), k=k, batch_size=50)
    assert ours["density"] == pytest.approx(inside.sum() / (k * len(fake)))
    assert ours["coverage"] == pytest.approx(inside.any(axis=1).mean())


def test_too_few_real_samples_names_num_samples_and_k():
    with pytest.raises(NotEnoughSamplesError, match=r"k=5.*num_samples=5"):
        density_coverage(torch.randn(5, 3), torch.randn(20, 3), k=5)
