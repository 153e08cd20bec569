"""KID: parity with torch-fidelity (same RNG subsets), the all-samples unbiased MMD, invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentgen.metrics import NotEnoughSamplesError
from latentgen.metrics.kid import kernel_inception_distance, mmd2_unbiased, polynomial_kernel


def _features(n: int, d: int = 64, shift: float = 0.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g) + shift).relu()


def test_matches_torch_fidelity_with_same_subsets():
    from torch_fidelity.metric_kid import kid_features_to_metric

    f1, f2 = _features(220, shift=0.2, seed=1), _features(250, seed=2)
    ref = kid_features_to_metric(f1, f2, kid_subsets=20, kid_subset_size=100, verbose=False, rng_seed=7)
    mean, std = kernel_inception_distance(f1, f2, subset_size=100, subsets=20, seed=7)
    assert mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-4)
    assert std == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-3)


def test_full_subset_equals_unbiased_mmd_on_all_samples():
    x, y = _features(60, d=16, seed=3).double().numpy(), _features(60, d=16, shift=0.5, seed=4).double().numpy()
    m, d = x.shape

    def k(a, b):  # reference kernel written independently, in numpy float64
        return (a @ b.T / d + 1.0) ** 3

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    ref = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.sum() / m**2
    mean, std = kernel_inception_distance(torch.from_numpy(x), torch.from_numpy(y), subset_size=m, subsets=3)
    assert mean == pytest.approx(ref, rel=1e-10)  # every "subset" is a permutation of all samples
    assert std == pytest.approx(0.0, abs=1e-12)


def test_same_distribution_is_about_zero_and_shift_is_not():
    a, b = _features(400, seed=5), _features(400, seed=6)
    c = _features(400, shift=0.5, seed=7)
    same, same_std = kernel_inception_distance(a, b, subset_size=200, subsets=20)
    shifted, _ = kernel_inception_distance(a, c, subset_size=200, subsets=20)
    assert abs(same) < 3 * same_std + 1e-9  # unbiased: centred on 0
    assert shifted > 20 * abs(same)


def test_kernel_and_mmd_helpers():
    x = torch.randn(5, 4)
    kxx = polynomial_kernel(x, x)
    assert kxx.dtype == torch.float64 and torch.allclose(kxx, kxx.T)
    assert torch.allclose(kxx, (x.double() @ x.double().T / 4 + 1) ** 3, rtol=1e-6)
    assert mmd2_unbiased(kxx, kxx, kxx) == pytest.approx(
        float((kxx.sum() - kxx.diagonal().sum()) * 2 / 20 - 2 * kxx.sum() / 25)
    )


def test_too_few_samples_is_a_clear_error():
    with pytest.raises(NotEnoughSamplesError, match=r"subset_size=1000.*num_samples"):
        kernel_inception_distance(_features(50), _features(60))
