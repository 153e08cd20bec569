"""Checkpoint callbacks: Lightning's ModelCheckpoint with our naming, and the config stored inside."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from latentgen import __version__
from latentgen.checkpoint import CONFIG_KEY, KIND_KEY, VERSION_KEY


def make_model_checkpoint(
    dirpath: str,
    save_last: bool = True,
    save_top_k: int = 1,
    every_n_train_steps: int | None = 500,
    monitor: str | None = None,
    mode: str = "min",
) -> ModelCheckpoint:
    """Keep ``last.ckpt`` plus the ``save_top_k`` newest (or best by ``monitor``) step checkpoints.

    Without ``monitor`` the checkpoints are ranked by ``step`` (newest kept): Lightning refuses
    ``save_top_k > 1`` with no monitored quantity.
    """
    if monitor is None:
        monitor, mode = "step", "max"
    return ModelCheckpoint(
        dirpath=dirpath,
        filename="step{step:07d}",
        auto_insert_metric_name=False,
        save_last=save_last,
        save_top_k=save_top_k,
        every_n_train_steps=every_n_train_steps,
        monitor=monitor,
        mode=mode,
        save_on_train_epoch_end=False,
    )


class ConfigInCheckpoint(L.Callback):
    """Store the resolved run config (plain containers only) and the system kind in every checkpoint."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = config

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = self.config
        checkpoint[KIND_KEY] = getattr(pl_module, "kind", type(pl_module).__name__)
        checkpoint[VERSION_KEY] = __version__
