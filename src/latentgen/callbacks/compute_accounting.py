"""Compute accounting of a latent-model run: what a point on a quality-vs-compute plot costs.

Written to ``out_file`` (``<run dir>/compute.json``; sweep jobs merge it into ``metrics.json``):

- ``params_denoiser`` / ``params_trainable`` / ``params_first_stage``
- ``flops_per_image`` / ``flops_per_step``: forward + backward of the denoiser at the latent size,
  counted once with ``torch.utils.flop_counter.FlopCounterMode`` on a copy of the denoiser (batch 1,
  times the global batch size); the frozen first stage is not counted (latents may come from a cache).
- ``train_images_per_s``: training images over the time spent inside training batches (the time of
  evaluations and sample grids that run between batches is not counted); ``train_time_s``.
- ``peak_cpu_rss_mb`` (``resource.getrusage`` max RSS of this process) and, when an accelerator is
  available, ``peak_accelerator_memory_mb`` (``torch.accelerator`` / max memory allocated).
"""

from __future__ import annotations

import copy
import logging
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from latentgen.files import atomic_write_json

log = logging.getLogger("latentgen")


def peak_cpu_rss_mb() -> float:
    """Max resident set size of this process in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def peak_accelerator_memory_mb() -> float | None:
    """Peak memory allocated on the current accelerator (CUDA, XPU, ...), None without one."""
    acc = getattr(torch, "accelerator", None)
    if acc is None or not acc.is_available():
        return None
    try:
        return float(acc.max_memory_allocated()) / 2**20
    except (AttributeError, RuntimeError):
        return None


def count_params(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def denoiser_train_flops(pl_module, batch: dict[str, Any]) -> int | None:
    """FLOPs of one forward + backward of (a copy of) the denoiser on one latent of the model's shape."""
    from torch.utils.flop_counter import FlopCounterMode

    shape = getattr(pl_module, "latent_shape", None)
    if shape is None:
        return None
    nets = copy.deepcopy(pl_module.trainable).train()
    device = pl_module.device
    batch = {k: (v[:1].to(device) if isinstance(v, torch.Tensor) else v[:1]) for k, v in batch.items()}
    x = torch.randn(1, *shape, device=device)  # (1, C, h, w)
    t = torch.full((1,), 0.5, device=device)
    with FlopCounterMode(display=False) as counter:
        cond = nets["conditioner"](batch)
        out = nets["denoiser"](x, t, cond)  # (1, C', h, w)
        out.float().square().mean().backward()
    return int(counter.get_total_flops())


class ComputeAccountingCallback(L.Callback):
    def __init__(self, out_file: str | os.PathLike = "compute.json", measure_flops: bool = True) -> None:
        super().__init__()
        self.out_file = Path(out_file)
        self.measure_flops = measure_flops
        self.stats: dict[str, Any] = {}
        self._t_batch: float | None = None
        self._train_time = 0.0
        self._images = 0
        self._fit_start = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = time.time()
        acc = getattr(torch, "accelerator", None)
        if acc is not None and acc.is_available():
            try:
                acc.reset_peak_memory_stats()
            except (AttributeError, RuntimeError):
                pass
        dm = trainer.datamodule
        batch_size = int(getattr(dm, "batch_size", 0) or 0) * int(trainer.accumulate_grad_batches)
        self.stats.update(
            {
                "params_denoiser": count_params(getattr(pl_module, "denoiser", None)),
                "params_trainable": count_params(getattr(pl_module, "trainable", None)),
                "params_first_stage": count_params(getattr(pl_module, "first_stage", None)),
                "latent_shape": list(getattr(pl_module, "latent_shape", None) or []),
                "global_batch_size": batch_size,
                "world_size": int(trainer.world_size),
                "device": str(pl_module.device),
            }
        )
        if self.measure_flops and hasattr(pl_module, "trainable"):
            try:
                flops = denoiser_train_flops(pl_module, dm.fixed_batch(1, split="val"))
            except Exception as e:  # noqa: BLE001 - accounting must never stop training
                log.warning("FLOP count failed (%s: %s)", type(e).__name__, e)
                flops = None
            if flops is not None:
                self.stats["flops_per_image"] = flops
                self.stats["flops_per_step"] = flops * batch_size

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t_batch = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._t_batch is None:
            return
        self._train_time += time.perf_counter() - self._t_batch
        self._t_batch = None
        from latentgen.conditioning.base import batch_size_of

        try:
            self._images += int(batch_size_of(batch)) * int(trainer.world_size)
        except Exception:  # noqa: BLE001
            self._images += int(self.stats.get("global_batch_size") or 0)

    def summary(self, trainer: L.Trainer) -> dict[str, Any]:
        out = dict(self.stats)
        out.update(
            {
                "train_time_s": self._train_time,
                "train_images": self._images,
                "train_images_per_s": self._images / self._train_time if self._train_time > 0 else None,
                "fit_wall_time_s": time.time() - self._fit_start,
                "global_step": int(trainer.global_step),
                "peak_cpu_rss_mb": peak_cpu_rss_mb(),
                "peak_accelerator_memory_mb": peak_accelerator_memory_mb(),
            }
        )
        if out.get("flops_per_step") and trainer.global_step:
            out["train_flops_total"] = out["flops_per_step"] * int(trainer.global_step)
        return out

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = self.summary(trainer)
        atomic_write_json(self.out_file, out)
        for logger in trainer.loggers:
            logger.log_metrics(
                {f"compute/{k}": float(v) for k, v in out.items() if isinstance(v, (int, float))},
                step=trainer.global_step,
            )
