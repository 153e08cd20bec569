"""Pre-emption: :class:`PreemptionCheckpoint` writes ``last.ckpt`` at the batch boundary where a run stopped
by SIGTERM (or by one of its ``signals``, e.g. submitit's SIGUSR2) ends; the training root
(:mod:`latentgen.app.training`) then exits with :data:`PREEMPTED_EXIT_CODE`.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

__all__ = ["PREEMPTED_EXIT_CODE", "PreemptionCheckpoint", "last_checkpoint_path"]

log = logging.getLogger("latentgen")

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, the shell's convention for "terminated by SIGTERM"


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
      only sets a flag; at the end of the next batch the ranks agree on it and the run stops exactly as on
      SIGTERM (``trainer.received_sigterm``, set here as Lightning's SIGTERM handler sets it: Lightning raises ``SIGTERMException`` once the batch has ended
      completely, every callback's ``on_train_batch_end`` included); the checkpoint is written, then the
      handler that was installed before (submitit's: requeue the job) is called.

    The training root turns the stop into exit code :data:`PREEMPTED_EXIT_CODE`; ``ckpt_path=last`` (or
    ``auto``) continues with the next batch. This is the only pre-emption mechanism: inside SLURM jobs
    Lightning's own auto-requeue is switched off (:func:`latentgen.app.building.cluster_environment`).
    """

    def __init__(self, signals: Sequence[str | int] = ()) -> None:
        super().__init__()
        self.signals = [getattr(signal, s) if isinstance(s, str) else signal.Signals(s) for s in signals]
        self.saved_path: Path | None = None
        self._received: int | None = None  # set by the signal handler
        self._requested: int | None = None  # the signal the ranks agreed to stop on
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
                "stopped by %s after global step %d; wrote %s (resume with ckpt_path=last)",
                why,
                trainer.global_step,
                path,
            )

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if not self.signals:
            return
        received = self._received is not None
        if trainer.world_size > 1:
            received = bool(trainer.strategy.reduce_boolean_decision(received, all=False))
        if received:
            self._requested = self._received if self._received is not None else self.signals[0]
            # Lightning stops after this batch's remaining hooks (the step log, step checkpoints, evaluations,
            # its validation and LR step), on every rank at once: the decision above was agreed.
            trainer._signal_connector.received_sigterm = True  # what Lightning's SIGTERM handler sets

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and self.saved_path is None and trainer.state.fn == "fit":
            signum = self._requested
            self._save(trainer, signal.Signals(signum).name if signum is not None else "SIGTERM")
            previous = self._previous.get(signum) if signum is not None else None
            if callable(previous):
                try:
                    previous(signum, None)  # e.g. submitit requeues the job
                except SystemExit:
                    pass  # submitit's handler exits; the root exits with PREEMPTED_EXIT_CODE after Lightning's teardown
        self.teardown(trainer, pl_module, "fit")  # Lightning skips the teardown hooks after an exception
