"""Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD GANs", §3 and App. D).

KID is the squared MMD between the feature distributions under the polynomial kernel

    k(x, y) = (gamma * <x, y> + coef0) ** degree,   gamma = 1 / D, coef0 = 1, degree = 3       (Bińkowski eq. 4)

estimated on ``subsets`` random subsets of ``subset_size`` samples of each set (drawn without
replacement), reported as the mean and standard deviation over subsets. Per subset, with m samples
X and Y (Gretton et al. 2012, Lemma 6, with the cross term kept over all m^2 pairs as in the KID
reference code):

    MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
              - 2 sum_{i, j} k(x_i, y_j) / m^2

The subsets are drawn exactly as torch-fidelity draws them (``numpy.random.RandomState(seed)``, for
set 1 then set 2 in every round), so with the same seed and the same features both give the same
value. The inner products run in the features' dtype (float32 like torch-fidelity); the kernel and
the sums run in float64.
"""

from __future__ import annotations

import numpy as np
import torch

from latentgen.errors import ConfigError
from latentgen.metrics._checks import NotEnoughSamplesError, as_features, check_same_dim

__all__ = ["kernel_inception_distance", "mmd2_unbiased", "polynomial_kernel"]


def polynomial_kernel(
    x: torch.Tensor, y: torch.Tensor, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> torch.Tensor:
    """(N, M) float64 kernel matrix k(x_i, y_j) = (gamma <x_i, y_j> + coef0)^degree; gamma defaults to 1/D."""
    if gamma is None:
        gamma = 1.0 / x.shape[1]
    dots = (x @ y.T).to(torch.float64)  # (N, M)
    return (dots * gamma + coef0) ** degree


def mmd2_unbiased(k_xx: torch.Tensor, k_xy: torch.Tensor, k_yy: torch.Tensor) -> float:
    """Unbiased MMD^2 (module docstring) from the three (m, m) kernel matrices."""
    m = k_xx.shape[0]
    if k_xx.shape != (m, m) or k_xy.shape != (m, m) or k_yy.shape != (m, m):
        raise ConfigError(f"mmd2_unbiased needs three (m, m) kernels, got {k_xx.shape}, {k_xy.shape}, {k_yy.shape}")
    sum_xx = k_xx.sum() - torch.diagonal(k_xx).sum()  # off-diagonal sums
    sum_yy = k_yy.sum() - torch.diagonal(k_yy).sum()
    mmd2 = (sum_xx + sum_yy) / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m)
    return float(mmd2)


def kernel_inception_distance(
    features_1: torch.Tensor | np.ndarray,
    features_2: torch.Tensor | np.ndarray,
    *,
    subset_size: int = 1000,
    subsets: int = 100,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 2020,
) -> tuple[float, float]:
    """KID mean and std over ``subsets`` subsets (torch-fidelity's ``kid_features_to_metric``).

    ``features_1`` is sampled first in every round; torch-fidelity passes the generated set as input 1.
    Raises :class:`NotEnoughSamplesError` when a set has fewer than ``subset_size`` samples.
    """
    f1 = as_features(features_1, "features_1")
    f2 = as_features(features_2, "features_2").to(f1.device)
    check_same_dim(f1, f2, ("features_1", "features_2"))
    n1, n2 = f1.shape[0], f2.shape[0]
    if subsets < 1 or subset_size < 2:
        raise ConfigError(
            f"KID needs subsets >= 1 and subset_size >= 2, got subsets={subsets}, subset_size={subset_size}"
        )
    if n1 < subset_size or n2 < subset_size:
        raise NotEnoughSamplesError(
            f"KID subset_size={subset_size} is larger than the number of samples (num_samples: {n1} and {n2}); "
            f"lower kid_subset_size or evaluate on more samples."
        )
    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets, dtype=np.float64)
    for i in range(subsets):
        idx1 = torch.from_numpy(rng.choice(n1, subset_size, replace=False)).to(f1.device)
        idx2 = torch.from_numpy(rng.choice(n2, subset_size, replace=False)).to(f1.device)
        x, y = f1[idx1], f2[idx2]  # (m, D) each
        k_xx = polynomial_kernel(x, x, degree, gamma, coef0)  # (m, m)
        k_yy = polynomial_kernel(y, y, degree, gamma, coef0)
        k_xy = polynomial_kernel(x, y, degree, gamma, coef0)
        mmds[i] = mmd2_unbiased(k_xx, k_xy, k_yy)
    return float(mmds.mean()), float(mmds.std())
