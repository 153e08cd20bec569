"""Small helpers shared by the systems."""

from __future__ import annotations

import math

import torch

from latentgen.errors import NonFiniteLossError


def check_finite(loss: torch.Tensor, *, what: str, step: int, batch_idx: int) -> None:
    """Raise a :class:`NonFiniteLossError` naming the step and batch if ``loss`` is NaN or Inf.

    The run stops there; the last checkpoint written before this step stays intact.
    """
    value = float(loss.detach())
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"{what} is {value} at global step {step} (batch {batch_idx} of this epoch). Training stopped; "
            "the last good checkpoint is intact in the run's checkpoints/ folder. Lower the learning rate, "
            "enable gradient clipping (trainer.gradient_clip_val=1.0) or use bf16 instead of fp16."
        )


def global_batch_size(trainer) -> int | None:
    """Global batch size = per-rank batch x world size x accumulation (None outside a trainer)."""
    if trainer is None or trainer.datamodule is None:
        return None
    per_rank = getattr(trainer.datamodule, "per_rank_batch_size", None)
    if per_rank is None:
        return None
    return int(per_rank) * trainer.world_size * trainer.accumulate_grad_batches
