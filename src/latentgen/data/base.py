"""Common base of the latentgen datasets: argument checks, sample keys and per-sample randomness.

Sample keys
-----------
``dataset[i]`` works as usual. The DataModule's training sampler instead yields ``(i, epoch)``
pairs (for datasets with ``epoch_keys = True``). A dataset then derives all of its augmentation
randomness for that access from ``(seed, split, i, epoch)``. The random crop/flip of a sample is
therefore a pure function of the seed, the index and the epoch, whatever the number of workers, the
DDP rank, ``persistent_workers`` or the state of the global RNG. That is what exact resume needs.
A plain ``int`` key on the training split draws a fresh seed from the torch RNG instead (random per
access; reproducible when the worker is seeded, as ``seed_everything(workers=True)`` does).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from latentgen.data.transforms import check_common

# Domain-separation words for numpy SeedSequence entropy. Every key has the same length for a given
# purpose, because SeedSequence([a, b]) equals SeedSequence([a, b, 0]).
SPLIT_CODE = {"train": 0, "val": 1}
PURPOSE_SCENE = 0x5CE4E  # procedural content (shapes)
PURPOSE_AUGMENT = 0xA06  # crops / flips
PURPOSE_SPLIT = 0x5B17  # train/val partition of a file list


def split_key(key: Any) -> tuple[int, int | None]:
    """``i`` -> ``(i, None)``; ``(i, epoch)`` -> ``(i, epoch)``."""
    if isinstance(key, (tuple, list)):
        if len(key) != 2:
            raise TypeError(f"a sample key is an int or (index, epoch), got {key!r}")
        return int(key[0]), int(key[1])
    if isinstance(key, torch.Tensor):
        key = key.item()
    return int(key), None


class ImageDataset(Dataset):
    """Base class: holds ``resolution``, ``channels``, ``split``, ``seed``; subclasses implement ``_get``.

    Subclasses set ``num_classes`` / ``class_names`` (``None`` when unlabelled) and implement
    ``__len__`` and ``_get(index, rng)`` where ``rng`` is the augmentation generator for this access
    (``None`` when the split is deterministic, i.e. ``val``).
    """

    #: The DataModule may pass ``(index, epoch)`` keys.
    epoch_keys: bool = True

    def __init__(self, *, resolution: int, channels: int, split: str, seed: int) -> None:
        self.resolution, self.channels, self.split = check_common(
            type(self).__name__, resolution=resolution, channels=channels, split=split
        )
        self.seed = int(seed)
        self.num_classes: int | None = None
        self.class_names: list[str] | None = None

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _get(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def augment_rng(self, index: int, epoch: int | None) -> np.random.Generator | None:
        """Generator for the random parts of one access; ``None`` on the (deterministic) val split."""
        if self.split != "train":
            return None
        if epoch is None:
            # Random per access; the torch RNG is seeded per worker by DataLoader / Lightning.
            return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        return np.random.default_rng([PURPOSE_AUGMENT, self.seed, SPLIT_CODE[self.split], index, epoch])

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index, epoch = split_key(key)
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"{type(self).__name__}[{self.split}]: index {index} out of range for length {n}")
        return self._get(index, self.augment_rng(index, epoch))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, n={len(self)}, resolution={self.resolution}, "
            f"channels={self.channels}, num_classes={self.num_classes})"
        )


def split_indices(n: int, val_fraction: float, seed: int, labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Deterministic train/val partition of ``range(n)``; stratified by ``labels`` when given.

    Returns sorted index arrays. With ``val_fraction > 0`` and ``n >= 2``, both parts are non-empty.
    """
    rng = np.random.default_rng([PURPOSE_SPLIT, int(seed), n])
    if labels is None:
        groups = [np.arange(n)]
    else:
        groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    val: list[np.ndarray] = []
    for g in groups:
        perm = rng.permutation(g)
        k = int(round(val_fraction * len(g)))
        val.append(perm[:k])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    if val_fraction > 0 and n >= 2:
        if len(val_idx) == 0:
            val_idx = np.sort(rng.permutation(n)[:1])
        elif len(val_idx) == n:
            val_idx = val_idx[1:]
    mask = np.ones(n, dtype=bool)
    mask[val_idx] = False
    return {"train": np.flatnonzero(mask), "val": val_idx.astype(np.int64)}
