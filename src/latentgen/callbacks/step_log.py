"""A loss curve that survives ``kill -9``: :class:`StepMetricsLog` appends the ``train/*`` metrics of every
batch to a JSON-lines file in the run dir (rank 0, flushed every line); a resumed run appends to it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch

__all__ = ["StepMetricsLog", "read_step_log"]


class StepMetricsLog(L.Callback):
    """Append ``{"step", "batch", "train/...": value}`` per training batch to ``<run dir>/<filename>``.

    Rank 0 only; one JSON line per batch, flushed at once, so the file holds every step up to a crash.
    A resumed run appends; a batch that was trained twice (after the last checkpoint of a killed run)
    appears twice, the later line being the resumed run's.
    """

    def __init__(self, filename: str = "train_steps.jsonl") -> None:
        super().__init__()
        self.filename = filename

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if not trainer.is_global_zero:
            return
        row: dict[str, Any] = {"step": int(trainer.global_step), "batch": int(trainer.fit_loop.total_batch_idx)}
        for k, v in trainer.callback_metrics.items():
            if k.startswith("train/") and isinstance(v, torch.Tensor) and v.numel() == 1:
                row[k] = float(v)
        path = Path(trainer.default_root_dir) / self.filename
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()


def read_step_log(path: str | Path) -> dict[int, dict[str, float]]:
    """The step log as {batch: row}, keeping the last line written for each batch."""
    rows: dict[int, dict[str, float]] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[int(row["batch"])] = row
    return rows
