"""Fréchet distance between Gaussians fitted to features (FID, FD-DINOv2, rFID).

FID (Heusel et al. 2017, §3 "Fréchet Inception Distance"; Dowson & Landau 1982):

    d^2 = ||mu_1 - mu_2||^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^{1/2})                      (FID)

The trace of the matrix square root is computed without ``scipy.linalg.sqrtm``. For any factor ``A``
with ``S_1 = A A^T``, the eigenvalues of ``S_1 S_2 = A A^T S_2`` are those of ``M = A^T S_2 A`` (the
products ``XY`` and ``YX`` share their non-zero eigenvalues), and ``M`` is symmetric PSD, so

    tr((S_1 S_2)^{1/2}) = sum_i sqrt(lambda_i(M)),   lambda_i(M) >= 0.

``A`` is the Cholesky factor of ``S_1`` when ``S_1`` is numerically positive definite (no inverse is
involved, so ill-conditioning is harmless), else the symmetric square root ``U diag(sqrt(l)) U^T``
from ``eigh`` (rank-deficient covariances, e.g. fewer samples than dimensions). The eigenvalues of
``M`` come from one ``eigvalsh``. Everything runs in float64; round-off that makes an eigenvalue
slightly negative is clamped to 0. At 2048-d this takes seconds where ``sqrtm`` takes about a minute
(benchmarks/frechet_speed.py).
"""

from __future__ import annotations

import numpy as np
import torch

from latentgen.errors import ConfigError

__all__ = ["feature_statistics", "frechet_distance", "frechet_distance_from_features", "trace_sqrt_product"]


def _as_f64(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    return x.detach().to(torch.float64)


def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of ``features`` (N, D), in float64.

    Same estimator as TTUR / torch-fidelity (``np.cov(rowvar=False)``, divisor N - 1).
    """
    f = _as_f64(features, "features")
    if f.dim() != 2:
        raise ConfigError(f"features must have shape (num_samples, dim), got {tuple(f.shape)}")
    n = f.shape[0]
    if n < 2:
        raise ConfigError(f"a covariance needs at least 2 samples, got num_samples={n}")
    mu = f.mean(dim=0)  # (D,)
    centered = f - mu  # (N, D)
    sigma = centered.T @ centered / (n - 1)  # (D, D)
    return mu, sigma


def trace_sqrt_product(sigma1: torch.Tensor, sigma2: torch.Tensor, method: str = "auto") -> torch.Tensor:
    """``tr((S_1 S_2)^{1/2})`` for symmetric PSD ``S_1``, ``S_2`` (float64), see the module docstring.

    ``method``: ``"cholesky"`` (``S_1 = L L^T``), ``"eigh"`` (``S_1 = S_1^{1/2} S_1^{1/2}``) or ``"auto"``
    (Cholesky, falling back to eigh when ``S_1`` is not numerically positive definite).
    """
    s1 = 0.5 * (sigma1 + sigma1.T)  # (D, D), exact symmetry
    s2 = 0.5 * (sigma2 + sigma2.T)
    factor = None
    if method in ("auto", "cholesky"):
        chol, info = torch.linalg.cholesky_ex(s1)  # S_1 = L L^T
        if int(info) == 0:
            factor = chol
        elif method == "cholesky":
            raise ConfigError(
                f"sigma1 is not positive definite (Cholesky failed at column {int(info)}); use method='eigh'"
            )
    elif method != "eigh":
        raise ConfigError(f"method must be 'auto', 'cholesky' or 'eigh', got {method!r}")
    if factor is None:
        evals, evecs = torch.linalg.eigh(s1)  # S_1 = U diag(l) U^T
        factor = (evecs * evals.clamp_min(0).sqrt()) @ evecs.T  # (D, D) = U diag(sqrt l) U^T
    m = factor.T @ s2 @ factor  # (D, D) = A^T S_2 A, same eigenvalues as S_1 S_2, symmetric PSD
    m = 0.5 * (m + m.T)
    return torch.linalg.eigvalsh(m).clamp_min(0).sqrt().sum()


def frechet_distance(
    mu1: torch.Tensor | np.ndarray,
    sigma1: torch.Tensor | np.ndarray,
    mu2: torch.Tensor | np.ndarray,
    sigma2: torch.Tensor | np.ndarray,
) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), eq. (FID) above, in float64."""
    mu1 = _as_f64(mu1, "mu1")
    device = mu1.device
    mu2 = _as_f64(mu2, "mu2").to(device)
    sigma1 = _as_f64(sigma1, "sigma1").to(device)
    sigma2 = _as_f64(sigma2, "sigma2").to(device)
    d = mu1.shape[-1]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ConfigError(
            "frechet_distance needs mu (D,) and sigma (D, D) of the same D; got "
            f"mu1 {tuple(mu1.shape)}, sigma1 {tuple(sigma1.shape)}, "
            f"mu2 {tuple(mu2.shape)}, sigma2 {tuple(sigma2.shape)}"
        )
    diff = mu1 - mu2  # (D,)
    tr_covmean = trace_sqrt_product(sigma1, sigma2)
    fd = diff.dot(diff) + torch.trace(sigma1) + torch.trace(sigma2) - 2.0 * tr_covmean
    return float(fd)


def frechet_distance_from_features(features1: torch.Tensor | np.ndarray, features2: torch.Tensor | np.ndarray) -> float:
    """FID between two feature sets (N1, D) and (N2, D)."""
    mu1, s1 = feature_statistics(features1)
    mu2, s2 = feature_statistics(features2)
    return frechet_distance(mu1, s1, mu2, s2)
