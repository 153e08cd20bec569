"""In-training evaluation: FID / precision / recall / density / coverage of EMA samples at fixed steps.

Every ``every_n_steps`` steps, or at the listed ``milestones`` (training steps), ``num_samples`` images
are generated with the EMA weights (``sampling_steps`` sampler steps) and compared with the cached
real reference features through :func:`latentgen.metrics.generator_evaluation.generator_metrics` (the same computation
as ``evaluate.py``). The numbers are logged as ``eval/<metric>`` (W&B shows FID against the step) and
appended to ``history_file`` (``<run dir>/eval_history.json``): step, metrics, NFE, sampler steps,
sampling images/s, the wall time since the start of training and the time the evaluation took.

At the end of training the final EMA model is evaluated once per entry of ``final_sampling_steps``
(FID against sampling speed, LDM Fig. 7); the entry with ``sampling_steps`` also counts as the
milestone at the last step. With ``reconstruction: true`` the first stage's reconstructions of the
val split are measured once at the start (PSNR / SSIM / LPIPS when ``lpips`` is given / rFID with the
same extractor) and stored in the history file under ``"reconstruction"``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from latentgen.files import atomic_write_json
from latentgen.metrics.autoencoder_evaluation import reconstruct_val_split
from latentgen.metrics.feature_metrics import FeatureMetric
from latentgen.metrics.generator_evaluation import generator_metrics, pop_phase_seconds

log = logging.getLogger("latentgen")


class GenerativeEvalCallback(L.Callback):
    def __init__(
        self,
        datamodule,
        extractor,
        *,
        milestones: list[int] | None = None,
        every_n_steps: int | None = None,
        num_samples: int = 1000,
        batch_size: int = 100,
        sampling_steps: int | None = None,
        final_sampling_steps: list[int] | None = None,
        metrics: Mapping[str, FeatureMetric] | Sequence[FeatureMetric | str] = ("fid", "prc", "density_coverage"),
        cache_dir: str | os.PathLike | None = None,
        dataset_key: dict[str, Any] | None = None,
        split: str = "train",
        history_file: str | os.PathLike = "eval_history.json",
        reconstruction: bool = False,
        lpips: torch.nn.Module | None = None,
        seed: int = 0,
        eval_at_end: bool = True,
    ) -> None:
        super().__init__()
        self.datamodule = datamodule
        if hasattr(datamodule, "batch_size"):
            datamodule.batch_size = int(batch_size)  # evaluation batches, independent of the training batch
            if hasattr(datamodule, "val_batch_size"):
                datamodule.val_batch_size = int(batch_size)
        self.extractor = extractor
        self.milestones = sorted({int(m) for m in (milestones or [])})
        self.every_n_steps = int(every_n_steps) if every_n_steps else 0
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.sampling_steps = None if sampling_steps is None else int(sampling_steps)
        self.final_sampling_steps = [int(s) for s in (final_sampling_steps or [])]
        # built from conf/metrics/ (a mapping name -> metric), or a list of metrics or built-in names
        self.metrics = list(metrics.values()) if isinstance(metrics, Mapping) else list(metrics)
        self.cache_dir = None if cache_dir in (None, "") else str(cache_dir)
        self.dataset_key = dict(dataset_key or {})
        self.split = split
        self.history_file = Path(history_file)
        self.reconstruction = reconstruction
        self.lpips = lpips
        self.seed = int(seed)
        self.eval_at_end = eval_at_end
        self.history: dict[str, Any] = {"evals": [], "final": [], "reconstruction": None}
        self._fit_start = time.time()
        self._done_steps: set[int] = set()
        self.enabled = True

    # ------------------------------------------------------------------ helpers
    def _due(self, step: int, last: int) -> bool:
        if any(last < m <= step for m in self.milestones):
            return True
        return self.every_n_steps > 0 and step // self.every_n_steps > last // self.every_n_steps

    def _dataset_key(self) -> dict[str, Any]:
        default = {"resolution": int(self.datamodule.resolution), "class": type(self.datamodule).__name__}
        return self.dataset_key or default

    @torch.no_grad()
    def evaluate(self, pl_module, steps: int | None) -> dict[str, float]:
        was_training = pl_module.training
        pl_module.eval()
        try:
            self.extractor.to(pl_module.device)
            results, _ = generator_metrics(
                pl_module, self.datamodule, self.extractor, metrics=self.metrics, num_samples=self.num_samples,
                batch_size=self.batch_size, cache_dir=self.cache_dir, dataset_config=self._dataset_key(),
                split=self.split, steps=steps, seed=self.seed, progress=False,
            )  # fmt: skip
        finally:
            pl_module.train(was_training)
        return {k: float(v) for k, v in results.items() if isinstance(v, (int, float, torch.Tensor))}

    def _entry(self, trainer, pl_module, steps: int | None, kind: str) -> dict[str, Any]:
        t0 = time.time()
        results = self.evaluate(pl_module, steps)
        steps = steps if steps is not None else pl_module.sampler.defaults.get("steps")
        entry = {
            "step": int(trainer.global_step),
            "kind": kind,
            "sampling_steps": steps,
            "nfe": results.pop("nfe", None),
            "sampling_images_per_s": results.pop("sampling_images_per_s", None),
            "num_samples": int(results.pop("num_samples", 0)),
            "num_reference": int(results.pop("num_reference", 0)),
            "seconds": pop_phase_seconds(results),
            "metrics": results,
            "wall_time_s": time.time() - self._fit_start,
            "eval_time_s": time.time() - t0,
            "extractor": getattr(self.extractor, "weights_label", getattr(self.extractor, "name", "?")),
        }
        log.info(
            "eval at step %d (%s, %s sampler steps): %s",
            entry["step"],
            kind,
            steps,
            {k: round(v, 4) for k, v in results.items()},
        )
        return entry

    def _log(self, trainer, entry: dict[str, Any], prefix: str) -> None:
        values = {f"{prefix}/{k}": v for k, v in entry["metrics"].items() if isinstance(v, float) and math.isfinite(v)}
        if entry.get("sampling_images_per_s"):
            values[f"{prefix}/sampling_images_per_s"] = float(entry["sampling_images_per_s"])
        for logger in trainer.loggers:
            logger.log_metrics(values, step=int(trainer.global_step))

    @rank_zero_only
    def _save(self) -> None:
        atomic_write_json(self.history_file, self.history, default=_jsonable)

    @torch.no_grad()
    def reconstruction_metrics(self, pl_module) -> dict[str, float]:
        """PSNR / SSIM (/ LPIPS) / rFID of the frozen first stage on (up to num_samples of) the val split."""
        from latentgen.metrics.generative_metrics import GenerativeMetrics
        from latentgen.metrics.reconstruction import ReconstructionMetrics

        def reconstruct(x: torch.Tensor) -> torch.Tensor:
            z = pl_module.first_stage.encode_scaled(x, sample=False)  # (B, c, h, w), the posterior mean
            return pl_module.first_stage.decode_scaled(z).clamp(-1, 1)  # (B, C, H, W)

        device = pl_module.device
        rec = ReconstructionMetrics(lpips=self.lpips).to(device)
        rfid = GenerativeMetrics(self.extractor, metrics=["fid"]).to(device)
        self.datamodule.setup("validate")
        reconstruct_val_split(self.datamodule, reconstruct, rec, rfid, self.num_samples, device)
        out = {k: float(v) for k, v in rec.compute().items()}
        out["rfid"] = float(rfid.compute()["fid"])
        return out

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = time.time()
        # Only latent generative models are evaluated (the same callbacks config also reaches the
        # first-stage run that a latent-model run trains first).
        self.enabled = hasattr(pl_module, "sample") and hasattr(pl_module, "first_stage")
        if not self.enabled:
            return
        if self.history_file.is_file():  # a resumed run continues its history
            try:
                self.history = json.loads(self.history_file.read_text())
                self._done_steps = {int(e["step"]) for e in self.history.get("evals", [])}
            except (OSError, ValueError):
                pass

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled and self.reconstruction and self.history.get("reconstruction") is None:
            t0 = time.time()
            was_training = pl_module.training
            pl_module.eval()
            try:
                rec = self.reconstruction_metrics(pl_module)
            finally:
                pl_module.train(was_training)
            self.history["reconstruction"] = {"metrics": rec, "eval_time_s": time.time() - t0}
            log.info("first-stage reconstruction: %s", {k: round(v, 4) for k, v in rec.items()})
            for logger in trainer.loggers:
                logger.log_metrics({f"first_stage/{k}": v for k, v in rec.items() if math.isfinite(v)}, step=0)
            self._save()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.enabled:
            return
        step = int(trainer.global_step)
        last = max(self._done_steps, default=0)
        if step in self._done_steps or not self._due(step, last):
            return
        if step >= int(trainer.max_steps) > 0 and self.eval_at_end and self.sampling_steps in self.final_sampling_steps:
            return  # the final evaluation covers the last step
        self._done_steps.add(step)
        self._evaluate_milestone(trainer, pl_module)

    def _evaluate_milestone(self, trainer, pl_module) -> None:
        entry = self._entry(trainer, pl_module, self.sampling_steps, "milestone")
        self.history["evals"].append(entry)
        self._log(trainer, entry, "eval")
        self._save()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self.eval_at_end and self.enabled):
            return
        step = int(trainer.global_step)
        steps_list = list(self.final_sampling_steps)
        if step not in self._done_steps and self.sampling_steps not in steps_list:
            steps_list.insert(0, self.sampling_steps)  # the last milestone, unless a listed count covers it
        self.history["final"] = [e for e in self.history.get("final", []) if e.get("step") != step]
        for steps in steps_list:
            entry = self._entry(trainer, pl_module, steps, "final")
            if steps == self.sampling_steps and step not in self._done_steps:
                milestone = dict(entry, kind="milestone")
                self.history["evals"].append(milestone)
                self._done_steps.add(step)
                self._log(trainer, milestone, "eval")
            if steps in self.final_sampling_steps:
                self.history["final"].append(entry)
                self._log(trainer, entry, f"eval_final/steps_{steps}")
            self._save()


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.tolist()
    return str(v)
