"""Callbacks that make a killed or pre-empted run continue exactly where it stopped.

- :class:`RNGStateCheckpoint` stores the torch / CUDA / numpy / python RNG states of every rank in the
  checkpoint and restores them on resume (Lightning restores model, optimizers, schedulers and loops,
  but not RNG states). Everything is stored as tensors and plain Python values, so the checkpoint still
  loads with ``weights_only=True``.
- :class:`PreemptionCheckpoint` writes ``last.ckpt`` at the batch boundary where a run stopped by SIGTERM
  (or by one of its ``signals``, e.g. submitit's SIGUSR2) ends; ``latentgen.run`` exits with code 143.
- :class:`StepMetricsLog` appends the ``train/*`` metrics of every batch to a JSON-lines file in the run dir
  (rank 0, flushed every line): a loss curve that survives ``kill -9`` and resumes.
- :class:`RankConsistencyCheck` (DDP diagnostics) checks at the end of training that every rank holds
  the same weights, EMA and buffers.

The data position is not a callback: the DataModule's train loader is itself checkpointed by Lightning
(:class:`latentgen.data.datamodule.ResumableDataLoader`).
"""

from __future__ import annotations

import json
import logging
import random
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger("latentgen")


# ---------------------------------------------------------------------------------------------- RNG states
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


# ---------------------------------------------------------------------------------------------- pre-emption
def last_checkpoint_path(trainer: L.Trainer) -> Path:
    """``<ModelCheckpoint dirpath>/last.ckpt`` (``<default_root_dir>/checkpoints/last.ckpt`` without one)."""
    cb = trainer.checkpoint_callback
    dirpath = getattr(cb, "dirpath", None) or str(Path(trainer.default_root_dir) / "checkpoints")
    return Path(dirpath) / "last.ckpt"


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM (and on the extra ``signals``), write ``last.ckpt`` at a batch boundary and stop.

    - SIGTERM: Lightning's handler sets ``trainer.received_sigterm`` (and, under DDP, tells every rank);
      the fit loop raises ``SIGTERMException`` after the current batch, on every rank. This callback saves
      the checkpoint in ``on_exception`` (a collective save: all ranks take part).
    - ``signals`` (e.g. ``[SIGUSR2]``, submitit's "you will be stopped soon" signal on SLURM): the handler
      only sets a flag; at the end of the next batch (agreed over DDP ranks) the checkpoint is written,
      then the handler that was installed before (submitit's: requeue the job) is called, and the run
      stops like on SIGTERM.

    ``latentgen.run`` turns the stop into exit code :data:`PREEMPTED_EXIT_CODE`; ``ckpt_path=last`` (or
    ``auto``) continues with the next batch. On SLURM without submitit, SIGUSR1 is Lightning's
    (auto-requeue with an ``hpc_ckpt_*.ckpt``; see README "Resuming and clusters").
    """

    def __init__(self, signals: Sequence[str | int] = ()) -> None:
        super().__init__()
        self.signals = [getattr(signal, s) if isinstance(s, str) else signal.Signals(s) for s in signals]
        self.saved_path: Path | None = None
        self._received: int | None = None
        self._previous: dict[int, Any] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or threading.current_thread() is not threading.main_thread():
            return
        for s in self.signals:
            self._previous[s] = signal.getsignal(s)
            signal.signal(s, self._on_signal)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._received = signum

    def _save(self, trainer: L.Trainer, why: str) -> None:
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # full state: resumable
        self.saved_path = path
        if trainer.is_global_zero:
            log.warning(
                "stopped by %s after global step %d; wrote %s (resume with ckpt_path=last)", why, trainer.global_step, path
            )

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if not self.signals:
            return
        received = self._received is not None
        if trainer.world_size > 1:
            received = bool(trainer.strategy.reduce_boolean_decision(received, all=False))
        if not received:
            return
        signum = self._received if self._received is not None else self.signals[0]
        self._save(trainer, signal.Signals(signum).name)
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, None)  # e.g. submitit requeues the job (and may exit the process here)
        raise SIGTERMException()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and self.saved_path is None and trainer.state.fn == "fit":
            self._save(trainer, "SIGTERM")
        self.teardown(trainer, pl_module, "fit")  # Lightning skips the teardown hooks after an exception


PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, the shell's convention for "terminated by SIGTERM"


# ---------------------------------------------------------------------------------------------- per-step log
class StepMetricsLog(L.Callback):
    """Append ``{"step", "batch", "train/...": value}`` per training batch to ``<run dir>/<filename>``.

    Rank 0 only; one JSON line per batch, flushed at once, so the file holds every step up to a crash.
    A resumed run appends; a batch that was trained twice (after the last checkpoint of a killed run)
    appears twice, the later line being the resumed run's.
    """

    def __init__(self, filename: str = "train_steps.jsonl") -> None:
        super().__init__()
        self.filename = filename

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
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


# ---------------------------------------------------------------------------------------------- DDP check
def module_fingerprint(module: torch.nn.Module) -> torch.Tensor:
    """(sum, sum of squares) of every parameter and floating buffer, in float64, in state_dict order."""
    vals = []
    for t in module.state_dict().values():
        if torch.is_floating_point(t):
            t = t.detach().double()
            vals += [t.sum(), t.square().sum()]
    return torch.stack(vals) if vals else torch.zeros(2, dtype=torch.float64)


class RankConsistencyCheck(L.Callback):
    """At the end of training, all-gather a fingerprint of the whole system (weights, EMA, latent scale,
    BatchNorm statistics) and raise if the ranks differ. A diagnostic for DDP runs; free otherwise."""

    def __init__(self, atol: float = 0.0) -> None:
        super().__init__()
        self.atol = float(atol)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size < 2:
            return
        mine = module_fingerprint(pl_module).to(pl_module.device)
        everyone = trainer.strategy.all_gather(mine)  # (world, n)
        spread = (everyone - everyone[0]).abs().max().item()
        if spread > self.atol:
            raise RuntimeError(f"DDP ranks disagree: state fingerprints differ by {spread:g} (> atol {self.atol:g})")
        if trainer.is_global_zero:
            log.info("DDP ranks agree on %d parameter/buffer tensors (max difference %g)", mine.numel() // 2, spread)
