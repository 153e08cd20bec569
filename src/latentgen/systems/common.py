"""Small helpers shared by the systems."""

from __future__ import annotations

import math

import torch

from latentgen.errors import ConfigError, NonFiniteLossError


def check_finite(loss: torch.Tensor, *, what: str, step: int, batch_idx: int, force: bool = False) -> None:
    """Raise a :class:`NonFiniteLossError` naming the step and batch if ``loss`` is NaN or Inf
    (or if ``force``: another DDP rank's loss was).

    The run stops there; the last checkpoint written before this step stays intact.
    """
    value = float(loss.detach())
    if not math.isfinite(value) or force:
        found = f"is {value}" if not math.isfinite(value) else "is NaN/Inf on another DDP rank"
        raise NonFiniteLossError(
            f"{what} {found} at global step {step} (batch {batch_idx} of this epoch). Training stopped; "
            "the last good checkpoint is intact in the run's checkpoints/ folder. Lower the learning rate, "
            "enable gradient clipping (trainer.gradient_clip_val=1.0), use bf16 instead of fp16, or skip such steps "
            "with nonfinite=skip."
        )


NONFINITE_POLICIES = ("raise", "skip")


def check_nonfinite_policy(policy: str) -> str:
    if policy not in NONFINITE_POLICIES:
        raise ConfigError(f"nonfinite={policy!r} must be one of {NONFINITE_POLICIES}: stop the run, or skip the step")
    return policy


def finite_on_all_ranks(loss: torch.Tensor, trainer) -> bool:
    """Whether ``loss`` is finite on every rank. Under DDP the decision is all-reduced, so that all ranks
    raise (or skip the step) together instead of leaving the others waiting in the next collective."""
    finite = bool(torch.isfinite(loss.detach()).all())
    if trainer is not None and trainer.world_size > 1:
        finite = bool(trainer.strategy.reduce_boolean_decision(finite, all=True))
    return finite


def global_batch_size(trainer) -> int | None:
    """Global batch size = per-rank batch x world size x accumulation (None outside a trainer)."""
    if trainer is None or trainer.datamodule is None:
        return None
    per_rank = getattr(trainer.datamodule, "per_rank_batch_size", None)
    if per_rank is None:
        return None
    return int(per_rank) * trainer.world_size * trainer.accumulate_grad_batches
