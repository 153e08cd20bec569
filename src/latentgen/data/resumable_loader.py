"""The training DataLoader that Lightning checkpoints: :class:`ResumableDataLoader` stores its position (in
global batches) so that a resumed run continues mid-epoch with the next unseen batch; and the worker seeding.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from latentgen.data.sampling import EpochShuffleSampler

__all__ = ["ResumableDataLoader", "seed_worker"]


class ResumableDataLoader(DataLoader):
    """The training DataLoader: Lightning stores its position in checkpoints and restores it on resume.

    Lightning calls ``state_dict()`` of a train loader that has one when it saves a checkpoint and
    ``load_state_dict()`` before it iterates again, so ``ckpt_path=...`` continues mid-epoch with the
    next unseen global batch instead of restarting the epoch. The position is counted in global
    batches (the same on every rank) and stored with the global batch size, so a run can resume
    with another number of devices.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._position = 0  # global batches of the current epoch already yielded

    @property
    def _resumable(self) -> bool:
        # False when Lightning swapped the sampler (e.g. trainer.overfit_batches): a plain DataLoader then.
        return isinstance(self.sampler, EpochShuffleSampler)

    def __iter__(self) -> Iterator[Any]:
        self._position = self.sampler.start_batch if self._resumable else 0
        for batch in super().__iter__():
            self._position += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        if not self._resumable:
            return {}
        s = self.sampler
        return {
            "epoch": s.epoch,
            "samples": self._position * s.global_batch_size,
            "global_batch_size": s.global_batch_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not state or not self._resumable:
            return
        s = self.sampler
        epoch, start = int(state["epoch"]), int(state["samples"]) // s.global_batch_size
        if start >= s.batches_per_epoch():  # saved after the last batch of an epoch: continue with the next
            epoch, start = epoch + 1, 0
        s.set_epoch(epoch)
        s.start_batch = start
        self._position = start


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed ``random`` and numpy from the seed torch gave this worker.

    torch seeds each worker with ``base_seed + worker_id`` and ``base_seed`` comes from the
    DataLoader's seeded ``generator``; third-party transforms that use ``random``/numpy's global
    RNG are thereby deterministic too. (latentgen's own datasets do not use global RNGs.)
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
