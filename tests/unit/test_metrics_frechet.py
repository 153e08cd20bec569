"""Fréchet distance: parity with scipy's sqrtm formula and torch-fidelity, analytic cases, invariants."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from latentgen.errors import ConfigError
from latentgen.metrics.frechet import (
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
    trace_sqrt_product,
)


def _random_spd(d: int, rng: np.random.Generator, cond: float = 1e3) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    evals = np.geomspace(1.0, 1.0 / cond, d)
    return (q * evals) @ q.T


def _scipy_fid(mu1, s1, mu2, s2) -> float:
    from scipy import linalg

    covmean = linalg.sqrtm(s1 @ s2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("d", [2, 16, 48])
def test_matches_scipy_sqrtm_on_known_gaussians(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _random_spd(d, rng), 2.0 * _random_spd(d, rng, cond=50.0)
    ours = frechet_distance(mu1, s1, mu2, s2)
    ref = _scipy_fid(mu1, s1, mu2, s2)
    assert ours == pytest.approx(ref, rel=1e-6)


def test_commuting_covariances_closed_form():
    # Diagonal covariances commute: tr((S1 S2)^1/2) = sum sqrt(a_i b_i), so d^2 = |dmu|^2 + sum (sqrt a - sqrt b)^2.
    a = torch.tensor([1.0, 4.0, 9.0, 0.25], dtype=torch.float64)
    b = torch.tensor([4.0, 1.0, 9.0, 1.0], dtype=torch.float64)
    mu1 = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    mu2 = torch.tensor([1.0, 1.0, 0.0, 3.0], dtype=torch.float64)
    expected = float(((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())  # 1 + 4 + (1 + 1 + 0 + 0.25)
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(7.25)
    assert float(trace_sqrt_product(torch.diag(a), torch.diag(b))) == pytest.approx(float((a * b).sqrt().sum()))


def test_fid_of_a_set_with_itself_is_zero():
    x = torch.randn(500, 64) @ torch.randn(64, 64) + 3.0
    mu, sigma = feature_statistics(x)
    fid = frechet_distance(mu, sigma, mu, sigma)
    assert abs(fid) < 1e-8 * float(torch.trace(sigma))
    assert frechet_distance_from_features(x, x.clone()) == pytest.approx(0.0, abs=1e-8 * float(torch.trace(sigma)))


def test_statistics_match_numpy_cov():
    x = torch.randn(100, 8)
    mu, sigma = feature_statistics(x)
    np.testing.assert_allclose(mu.numpy(), x.double().numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(x.double().numpy(), rowvar=False), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("n1,n2", [(400, 350), (40, 30)])  # full rank and rank-deficient (n < d) covariances
def test_matches_torch_fidelity_on_same_features(n1, n2):
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    g = torch.Generator().manual_seed(1)
    f1 = torch.randn(n1, 64, generator=g).relu()
    f2 = (torch.randn(n2, 64, generator=g) * 1.2 + 0.1).relu()
    ref = fid_statistics_to_metric(fid_features_to_statistics(f1), fid_features_to_statistics(f2), False)
    assert frechet_distance_from_features(f1, f2) == pytest.approx(ref["frechet_inception_distance"], rel=1e-4)


def test_symmetric_and_shift_invariant():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(300, 16, generator=g), torch.randn(300, 16, generator=g) * 0.5
    fab, fba = frechet_distance_from_features(a, b), frechet_distance_from_features(b, a)
    assert fab == pytest.approx(fba, rel=1e-9)
    assert frechet_distance_from_features(a + 5, b + 5) == pytest.approx(fab, rel=1e-6)  # float32 rounding of +5


def test_bad_shapes_raise_config_error():
    with pytest.raises(ConfigError, match="same D"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ConfigError, match="num_samples=1"):
        feature_statistics(torch.zeros(1, 3))


@pytest.mark.slow
def test_2048d_matches_torch_fidelity_and_is_fast():
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    g = torch.Generator().manual_seed(3)
    mix = torch.randn(2048, 2048, generator=g) / 2048**0.5
    f1 = (torch.randn(2600, 2048, generator=g) @ mix).relu()
    f2 = (torch.randn(2600, 2048, generator=g) @ mix * 1.05 + 0.02).relu()
    (mu1, s1), (mu2, s2) = feature_statistics(f1), feature_statistics(f2)
    t0 = time.perf_counter()
    ours = frechet_distance(mu1, s1, mu2, s2)
    seconds = time.perf_counter() - t0
    ref = fid_statistics_to_metric(
        {"mu": mu1.numpy(), "sigma": s1.numpy()}, {"mu": mu2.numpy(), "sigma": s2.numpy()}, False
    )
    assert ours == pytest.approx(ref["frechet_inception_distance"], rel=1e-4)
    assert seconds < 30.0


def test_cholesky_and_eigh_paths_agree():
    rng = np.random.default_rng(5)
    s1, s2 = torch.from_numpy(_random_spd(24, rng, cond=1e6)), torch.from_numpy(_random_spd(24, rng))
    a = trace_sqrt_product(s1, s2, method="cholesky")
    b = trace_sqrt_product(s1, s2, method="eigh")
    assert float(a) == pytest.approx(float(b), rel=1e-10)
    singular = torch.zeros(24, 24, dtype=torch.float64)
    singular[:3, :3] = torch.eye(3)  # rank 3: "auto" falls back to eigh
    assert float(trace_sqrt_product(singular, s2)) == pytest.approx(
        float(trace_sqrt_product(singular, s2, method="eigh"))
    )
    with pytest.raises(ConfigError, match="not positive definite"):
        trace_sqrt_product(singular, s2, method="cholesky")
