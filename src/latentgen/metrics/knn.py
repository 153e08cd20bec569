"""k-NN manifold metrics: improved precision/recall and density/coverage.

**Improved precision and recall** (Kynkäänniemi et al. 2019, §2, eqs. 1–2).

Each set's manifold is the union of balls around its samples whose radius is the distance to the
k-th nearest *other* sample of the same set (k = 3):

    f(phi, Phi) = 1  if  ||phi - phi'||_2 <= ||phi' - NN_k(phi')||_2  for at least one phi' in Phi    (eq. 1)
    precision = mean_{phi_g in Phi_g} f(phi_g, Phi_r),   recall = mean_{phi_r in Phi_r} f(phi_r, Phi_g)  (eq. 2)

Conventions follow torch-fidelity's ``prc`` (``calculate_precision_recall_full``) so that both give
the same numbers on the same features: Euclidean distances from ``torch.cdist`` in the features'
dtype; the radius is the (k + 1)-th smallest distance of a sample to its own set, i.e. the sample
itself (distance 0) is skipped; membership is ``<=``; distances are computed in blocks of
``batch_size`` rows and columns; F-score = 2 P R / max(1e-5, P + R).

**Density and coverage** (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics", §3, eqs. 3–4).

Only the *real* samples X_1..X_N define balls B(X_i, NND_k(X_i)), NND_k = distance to the k-th
nearest other real sample (k = 5); generated samples Y_1..Y_M are counted against them:

    density  = 1 / (k M) * sum_j sum_i 1[Y_j in B(X_i, NND_k(X_i))]                                (eq. 3)
    coverage = 1 / N     * sum_i 1[exists j: Y_j in B(X_i, NND_k(X_i))]                            (eq. 4)

Density can exceed 1 (generated samples crowd where real samples are dense); coverage is in [0, 1].
As in the authors' reference code (``prdc``), membership is strict (``d < NND_k``) and the radius
skips the sample itself. Distances are Euclidean (``torch.cdist``), in blocks of ``batch_size``.
"""

from __future__ import annotations

import numpy as np
import torch

from latentgen.metrics._checks import NotEnoughSamplesError, as_features, check_same_dim, require_knn_samples

__all__ = ["density_coverage", "knn_radii", "precision_recall"]


def _cdist_blocks(a: torch.Tensor, b: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(Na, Nb) Euclidean distances, built from (batch_size, batch_size) blocks like torch-fidelity."""
    rows = []
    for a_blk in a.split(batch_size):
        rows.append(torch.cat([torch.cdist(a_blk, b_blk) for b_blk in b.split(batch_size)], dim=1))
    return torch.cat(rows, dim=0)


def knn_radii(features: torch.Tensor, k: int, batch_size: int = 10000) -> torch.Tensor:
    """(N,) distance from each sample to its k-th nearest neighbour in the same set, itself excluded."""
    radii = []
    for blk in features.split(batch_size):
        d = _cdist_blocks(blk, features, batch_size)  # (b, N), includes d(x, x) = 0
        radii.append(d.kthvalue(k + 1, dim=1).values)  # (b,) skip self: (k + 1)-th smallest
    return torch.cat(radii)


def _fraction_inside(queries: torch.Tensor, anchors: torch.Tensor, radii: torch.Tensor, batch_size: int) -> float:
    """Fraction of queries inside at least one ball B(anchor_j, radii_j) (eq. 1, ``<=``)."""
    inside = 0
    for q in queries.split(batch_size):
        d = _cdist_blocks(q, anchors, batch_size)  # (b, M)
        inside += int((d <= radii.unsqueeze(0)).any(dim=1).sum())
    return inside / queries.shape[0]


def precision_recall(
    real_features: torch.Tensor | np.ndarray,
    fake_features: torch.Tensor | np.ndarray,
    *,
    k: int = 3,
    batch_size: int = 10000,
) -> dict[str, float]:
    """``{"precision", "recall", "f_score"}`` of generated (fake) features against real ones.

    Needs at least ``k + 1`` samples in each set (else :class:`NotEnoughSamplesError`).
    """
    real = as_features(real_features, "real_features")
    fake = as_features(fake_features, "fake_features").to(real.device)
    check_same_dim(real, fake, ("real_features", "fake_features"))
    require_knn_samples(real.shape[0], k, "precision/recall", "real_features")
    require_knn_samples(fake.shape[0], k, "precision/recall", "fake_features")
    radii_real = knn_radii(real, k, batch_size)  # (Nr,)
    radii_fake = knn_radii(fake, k, batch_size)  # (Nf,)
    precision = _fraction_inside(fake, real, radii_real, batch_size)  # eq. 2, left
    recall = _fraction_inside(real, fake, radii_fake, batch_size)  # eq. 2, right
    f_score = 2 * precision * recall / max(1e-5, precision + recall)
    return {"precision": precision, "recall": recall, "f_score": f_score}


def density_coverage(
    real_features: torch.Tensor | np.ndarray,
    fake_features: torch.Tensor | np.ndarray,
    *,
    k: int = 5,
    batch_size: int = 10000,
) -> dict[str, float]:
    """``{"density", "coverage"}`` of generated (fake) features against real ones (eqs. 3–4).

    Needs at least ``k + 1`` real samples (else :class:`NotEnoughSamplesError`) and one fake sample.
    """
    real = as_features(real_features, "real_features")
    fake = as_features(fake_features, "fake_features").to(real.device)
    check_same_dim(real, fake, ("real_features", "fake_features"))
    require_knn_samples(real.shape[0], k, "density/coverage", "real_features")
    if fake.shape[0] < 1:
        raise NotEnoughSamplesError("density/coverage needs at least 1 sample in fake_features, got num_samples=0")
    radii = knn_radii(real, k, batch_size)  # (N,) NND_k(X_i)
    in_balls = 0  # sum_j sum_i 1[Y_j in B(X_i)]
    covered = 0  # sum_i 1[exists j: Y_j in B(X_i)]
    for start, r_blk in zip(range(0, real.shape[0], batch_size), real.split(batch_size)):
        d = _cdist_blocks(r_blk, fake, batch_size)  # (b, M): d(X_i, Y_j)
        inside = d < radii[start : start + r_blk.shape[0]].unsqueeze(1)  # (b, M)
        in_balls += int(inside.sum())
        covered += int(inside.any(dim=1).sum())
    density = in_balls / (k * fake.shape[0])  # eq. 3
    coverage = covered / real.shape[0]  # eq. 4
    return {"density": density, "coverage": coverage}
