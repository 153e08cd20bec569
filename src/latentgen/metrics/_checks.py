"""Input checks shared by the feature-space metrics."""

from __future__ import annotations

import numpy as np
import torch

from latentgen.errors import ConfigError


class NotEnoughSamplesError(ConfigError):
    """A metric got fewer samples than it needs (e.g. a k-NN radius needs k + 1 points)."""


def as_features(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """A (N, D) floating tensor from a tensor or array; raises a clear error otherwise."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.dim() != 2:
        raise ConfigError(f"{name} must have shape (num_samples, dim), got {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float()
    return x.detach()


def check_same_dim(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> None:
    if a.shape[1] != b.shape[1]:
        raise ConfigError(
            f"{names[0]} has dim {a.shape[1]} but {names[1]} has dim {b.shape[1]}; "
            "both must come from the same extractor"
        )


def require_knn_samples(num_samples: int, k: int, metric: str, name: str) -> None:
    """A k-NN radius excludes the point itself, so it needs ``k + 1`` points."""
    if k < 1:
        raise ConfigError(f"{metric}: k must be >= 1, got k={k}")
    if num_samples < k + 1:
        raise NotEnoughSamplesError(
            f"{metric} with k={k} needs at least k + 1 = {k + 1} samples in {name}, got num_samples={num_samples}. "
            f"Evaluate on more samples or lower k."
        )
