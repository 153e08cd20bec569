"""Lightning's learning-rate monitor, idle in a run without a logger (``logger=none``) instead of failing."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor as _LightningLearningRateMonitor


class LearningRateMonitor(_LightningLearningRateMonitor):
    """Logs the learning rate of every optimizer; does nothing when the trainer has no logger."""

    _idle = False

    def on_train_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self._idle = not trainer.loggers
        if not self._idle:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if not self._idle:
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if not self._idle:
            super().on_train_epoch_start(trainer, *args, **kwargs)
