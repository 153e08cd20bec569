"""scikit-learn's 1797 handwritten 8x8 digits (embedded, no download), upsampled to ``resolution``."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from latentgen.data.base import ImageDataset, split_indices
from latentgen.data.transforms import check_fraction
from latentgen.errors import ConfigError

_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Precompute the whole split when it takes at most this many bytes (float32); else resize per access.
_PRECOMPUTE_MAX_BYTES = 64 * 2**20


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0  # (N, 8, 8) in [0, 1]
    labels = np.asarray(bunch.target, dtype=np.int64)  # (N,)
    return images, labels


class DigitsDataset(ImageDataset):
    """``sklearn.datasets.load_digits()``: 1797 8x8 gray digits with labels 0-9.

    Values 0..16 are mapped to [0, 1], resized to ``resolution`` (``interpolation``: bicubic or
    bilinear; clamped), then to [-1, 1]. The train/val split is stratified by class and fixed by
    ``seed``. ``channels=3`` repeats the gray plane. Each sample has ``image``, ``label`` and a
    ``caption`` ("a handwritten digit seven").
    """

    def __init__(
        self,
        resolution: int = 32,
        channels: int = 1,
        split: str = "train",
        seed: int = 0,
        val_fraction: float = 0.1,
        interpolation: str = "bicubic",
    ) -> None:
        super().__init__(resolution=resolution, channels=channels, split=split, seed=seed)
        self.val_fraction = check_fraction("DigitsDataset", "data.dataset.val_fraction", val_fraction)
        if interpolation not in ("bicubic", "bilinear"):
            raise ConfigError(
                f"DigitsDataset: data.dataset.interpolation={interpolation!r} is not supported; "
                "use 'bicubic' or 'bilinear'."
            )
        self.interpolation = interpolation
        images, labels = _load_digits()
        idx = split_indices(len(labels), self.val_fraction, self.seed, labels)[self.split]
        self.indices = idx  # positions in load_digits() order
        self._images = images[idx]  # (N_split, 8, 8)
        self._labels = torch.from_numpy(labels[idx])  # (N_split,)
        self.num_classes = 10
        self.class_names = [str(d) for d in range(10)]
        n = len(idx)
        self._cache: torch.Tensor | None = None
        if n * self.channels * self.resolution**2 * 4 <= _PRECOMPUTE_MAX_BYTES:
            self._cache = self._render(torch.from_numpy(self._images))

    def _render(self, small: torch.Tensor) -> torch.Tensor:
        """``(N, 8, 8)`` in [0, 1] -> ``(N, C, R, R)`` in [-1, 1]."""
        x = small.unsqueeze(1)  # (N, 8, 8) -> (N, 1, 8, 8)
        if self.resolution != 8:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode=self.interpolation, align_corners=False)
        x = x.clamp_(0.0, 1.0).mul_(2.0).sub_(1.0)
        if self.channels == 3:
            x = x.expand(-1, 3, -1, -1).contiguous()  # (N, 1, R, R) -> (N, 3, R, R)
        return x

    def __len__(self) -> int:
        return len(self.indices)

    def _get(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        if self._cache is not None:
            image = self._cache[index].clone()
        else:
            image = self._render(torch.from_numpy(self._images[index : index + 1]))[0]
        label = self._labels[index]
        return {"image": image, "label": label.clone(), "caption": f"a handwritten digit {_DIGIT_WORDS[int(label)]}"}
