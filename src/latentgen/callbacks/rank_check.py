"""DDP diagnostics: :class:`RankConsistencyCheck` checks at the end of training that every rank holds the same
weights, EMA and buffers.
"""

from __future__ import annotations

import logging

import lightning as L
import torch

__all__ = ["RankConsistencyCheck", "module_fingerprint"]

log = logging.getLogger("latentgen")


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
