"""The training order: :class:`EpochShuffleSampler`, a permutation drawn from ``(seed, epoch)`` and cut into
global batches, so that a DDP run sees, step by step, the same global batches as a one-device run.

The order is a pure function of the seeds and the epoch: nothing depends on the global RNG, the number of
workers or the world size (:mod:`latentgen.data.datamodule` builds the sampler for the train loader).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from latentgen.errors import ConfigError

__all__ = ["EpochShuffleSampler", "mix_seed", "positive_int"]


class EpochShuffleSampler(DistributedSampler):
    """A permutation of ``range(n)`` drawn from ``seed`` and the epoch, cut into GLOBAL batches.

    The permutation is the same for every world size. It is cut into global batches of
    ``batch_size * num_replicas`` samples and rank ``r`` takes the ``r``-th contiguous slice of
    ``batch_size`` samples of every global batch, so the ranks of one optimizer step together see
    exactly the global batch a one-process run sees at that step (and in the same order).
    With ``drop_last`` only whole global batches are used; without it the last, partial global batch
    is padded (from the start of the permutation) to a multiple of ``num_replicas`` and split evenly.

    ``start_batch`` skips the first global batches of the current epoch: how a resumed run continues
    mid-epoch (:class:`ResumableDataLoader` sets it from the checkpoint). ``set_epoch`` to another
    epoch resets it to 0.

    Yields ``(index, epoch)`` when ``epoch_keys`` is true (see :mod:`latentgen.data.base`), else ints.
    A ``DistributedSampler`` subclass on purpose: Lightning then uses it as it is under DDP instead of
    wrapping it in a ``DistributedSamplerWrapper`` (which would re-shuffle and interleave the ranks).
    """

    def __init__(
        self,
        n: int,
        seed: int,
        epoch_keys: bool = False,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        batch_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        super().__init__(range(int(n)), num_replicas=int(num_replicas), rank=int(rank), shuffle=False, seed=int(seed))
        self.n, self.epoch_keys = int(n), bool(epoch_keys)
        self.batch_size = positive_int("batch_size", batch_size)  # per rank
        self.drop_last = bool(drop_last)
        self.start_batch = 0

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self.start_batch = 0
        self.epoch = int(epoch)

    def _layout(self) -> tuple[int, int]:
        """(number of whole global batches, per-rank size of the last partial one or 0)."""
        full, rest = divmod(self.n, self.global_batch_size)
        if self.drop_last or rest == 0:
            return full, 0
        return full, -(-rest // self.num_replicas)  # ceil: padded to a multiple of num_replicas

    def batches_per_epoch(self) -> int:
        full, partial = self._layout()
        return full + (1 if partial else 0)

    def __len__(self) -> int:
        full, partial = self._layout()
        return full * self.batch_size + partial  # per rank, whole epoch (also when resuming mid-epoch)

    def __iter__(self) -> Iterator[Any]:
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        order = torch.randperm(self.n, generator=g).tolist()
        full, partial = self._layout()
        gb, b, r = self.global_batch_size, self.batch_size, self.rank
        mine: list[int] = []
        for k in range(self.start_batch, full):
            mine += order[k * gb + r * b : k * gb + (r + 1) * b]
        if partial and self.start_batch <= full:
            tail = order[full * gb :]
            tail += order[: partial * self.num_replicas - len(tail)]  # pad (num_replicas > 1 only)
            mine += tail[r * partial : (r + 1) * partial]
        if self.epoch_keys:
            epoch = self.epoch
            return iter([(i, epoch) for i in mine])
        return iter(mine)


def mix_seed(*words: int) -> int:
    """A 63-bit seed from integers (numpy SeedSequence: stable across machines and versions)."""
    entropy = [int(w) & 0xFFFFFFFFFFFFFFFF for w in words]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) >> 1


def positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"ImageDataModule: {key}={value!r} must be a positive integer.")
    return int(value)
