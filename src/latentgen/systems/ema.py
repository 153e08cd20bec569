"""Exponential moving average of a module's parameters, kept as a frozen copy inside the system.

Because the copy is a submodule, it is part of the system's ``state_dict``: it is saved in every
checkpoint and restored bit-exactly on resume (DiT/SiT lose it: docs/pitfalls.md). Under DDP every rank
applies the same update to the same (all-reduced) parameters, so the copies stay identical.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """``shadow = decay * shadow + (1 - decay) * live`` after every optimizer step.

    With ``warmup`` the decay ramps up as ``min(decay, (1 + n) / (10 + n))`` (n = updates so far),
    so early averages are not dominated by the random initialization.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.warmup = warmup
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        n = int(self.num_updates)
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        live = dict(model.named_parameters())
        for name, p in self.shadow.named_parameters():
            p.lerp_(live[name].detach().to(p.dtype), 1.0 - d)
        live_buffers = dict(model.named_buffers())
        for name, b in self.shadow.named_buffers():
            b.copy_(live_buffers[name])
        self.num_updates += 1

    def train(self, mode: bool = True) -> EMA:
        # The shadow copy is only ever used for inference.
        super().train(mode)
        self.shadow.eval()
        return self
