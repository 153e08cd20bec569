"""Exact resume, part RNG: :class:`RNGStateCheckpoint` stores the torch / CUDA / numpy / python RNG states of
every rank in the checkpoint and restores them on resume (Lightning restores model, optimizers, schedulers and
loops, but not RNG states). Everything is stored as tensors and plain Python values, so the checkpoint still
loads with ``weights_only=True``.

The data position is not a callback: the train loader is itself checkpointed by Lightning
(:class:`latentgen.data.resumable_loader.ResumableDataLoader`).
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist

__all__ = ["RNGStateCheckpoint", "collect_rng_states", "set_rng_states"]


def collect_rng_states() -> dict[str, Any]:
    """The process's RNG states as tensors / ints / floats / tuples (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch_cuda"] = torch.cuda.get_rng_state()  # the current device's generator
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "torch_cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["torch_cuda"])


class RNGStateCheckpoint(L.Callback):
    """Save every rank's RNG states in checkpoints; restore this rank's on resume, before the first batch.

    Under DDP the states are all-gathered when a checkpoint is made (``state_dict`` runs on every rank),
    and each rank restores its own (rank 0's when the world size changed).
    """

    def __init__(self) -> None:
        super().__init__()
        self._to_restore: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        mine = collect_rng_states()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, mine)
            return {"per_rank": gathered}
        return {"per_rank": [mine]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        per_rank = state_dict.get("per_rank") or []
        if not per_rank:
            return
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self._to_restore = per_rank[rank] if rank < len(per_rank) else per_rank[0]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Applied here, not in load_state_dict: what runs between loading and the first batch (model
        # set-up, DDP wrapping, dataloaders) must not shift the restored streams.
        if self._to_restore is not None:
            set_rng_states(self._to_restore)
            self._to_restore = None
