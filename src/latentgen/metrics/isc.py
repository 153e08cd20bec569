"""Inception Score from classifier logits (Salimans et al. 2016, §4).

    IS = exp( E_x KL( p(y|x) || p(y) ) ),   p(y) = E_x p(y|x)                                     (IS)

computed on ``splits`` equal chunks of the (shuffled) samples and reported as mean and std over chunks.
p(y) is the marginal of each chunk. Shuffling and chunking follow torch-fidelity's
``isc_features_to_metric`` (``RandomState(seed).permutation``, chunk i = [i N / s, (i + 1) N / s)),
in float64. Bounds: 1 (every prediction equal to the marginal) <= IS <= K (confident and uniform over K
classes).
"""

from __future__ import annotations

import numpy as np
import torch

from latentgen.metrics._checks import NotEnoughSamplesError, as_features

__all__ = ["inception_score"]


def inception_score(
    logits: torch.Tensor | np.ndarray, *, splits: int = 10, shuffle: bool = True, seed: int = 2020
) -> tuple[float, float]:
    """IS mean and std over ``splits`` chunks, from (N, K) logits (softmax is applied here)."""
    x = as_features(logits, "logits")
    n = x.shape[0]
    if n < splits:
        raise NotEnoughSamplesError(
            f"Inception Score with splits={splits} needs at least {splits} samples, got num_samples={n}"
        )
    if shuffle:
        perm = torch.from_numpy(np.random.RandomState(seed).permutation(n)).to(x.device)
        x = x[perm]
    x = x.to(torch.float64)
    log_p = x.log_softmax(dim=1)  # (N, K) log p(y|x)
    scores = []
    for i in range(splits):
        chunk = log_p[i * n // splits : (i + 1) * n // splits]  # (n_i, K)
        log_marginal = chunk.exp().mean(dim=0, keepdim=True).log()  # (1, K) log p(y)
        kl = (chunk.exp() * (chunk - log_marginal)).sum(dim=1)  # (n_i,) KL(p(y|x) || p(y))
        scores.append(float(kl.mean().exp()))  # eq. (IS)
    return float(np.mean(scores)), float(np.std(scores))
