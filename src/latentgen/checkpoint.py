"""Checkpoint files: atomic writes, the config inside, safe loading.

- Every checkpoint holds the resolved run config (``latentgen_config``) and the system kind
  (``latentgen_kind``), so ``evaluate.py ckpt=...`` can rebuild the system with nothing else.
- Checkpoints are written to a temporary file in the same folder and renamed over the target:
  a crash mid-write never leaves a truncated ``last.ckpt``.
- Loading uses ``torch.load(weights_only=True)``: a crafted pickle cannot execute code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from latentgen.errors import CheckpointError
from latentgen.files import atomic_torch_save

CONFIG_KEY = "latentgen_config"
KIND_KEY = "latentgen_kind"
VERSION_KEY = "latentgen_version"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes atomically and loads with ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self, path, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_checkpoint_file(path, map_location=map_location or "cpu")


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict safely, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist. Give the path of a .ckpt file written by train.py.")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise CheckpointError(
            f"cannot load checkpoint '{path}' safely (weights_only=True): {type(e).__name__}: {str(e)[:500]}. "
            "It is corrupt, truncated, or not a latentgen checkpoint; latentgen never unpickles arbitrary objects."
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"'{path}' holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def read_latentgen_checkpoint(path: str | os.PathLike, expected_kind: str | None = None) -> dict[str, Any]:
    """Load a latentgen checkpoint and check that it carries its config (and is of ``expected_kind``)."""
    ckpt = load_checkpoint_file(path)
    if CONFIG_KEY not in ckpt or KIND_KEY not in ckpt:
        raise CheckpointError(
            f"'{path}' is not a latentgen checkpoint (it has no '{CONFIG_KEY}'/'{KIND_KEY}' entries). "
            "Use a .ckpt written by latentgen's train.py."
        )
    if expected_kind is not None and ckpt[KIND_KEY] != expected_kind:
        raise CheckpointError(
            f"'{path}' is a checkpoint of a '{ckpt[KIND_KEY]}' run, but a '{expected_kind}' checkpoint is needed here."
        )
    return ckpt
