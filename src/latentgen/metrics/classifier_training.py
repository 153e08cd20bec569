"""The training loop the evaluation classifiers share (the dataset classifier and the shapes attribute
classifier): AdamW with a one-cycle learning rate (15 % warm-up, cosine decay), seeded shuffles."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["FitSummary", "fit_classifier", "progress_bar"]


@dataclass
class FitSummary:
    epoch_losses: list[float]  # mean batch loss of each epoch
    seconds: float  # wall time of the loop


def fit_classifier(
    net: nn.Module,
    num_samples: int,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    generator: torch.Generator,
    drop_last: bool = False,
    progress: bool = False,
    desc: str = "train classifier",
) -> FitSummary:
    """Train ``net`` for ``epochs`` passes over ``num_samples`` samples; leaves it in eval mode.

    Each epoch draws one permutation from ``generator`` and walks it in batches of ``batch_size``
    (the last, shorter batch dropped when ``drop_last``); ``batch_loss(indices)`` returns the scalar loss
    of the samples at those (B,) indices (it may draw augmentations from the same generator).
    """
    steps_per_epoch = num_samples // batch_size if drop_last else math.ceil(num_samples / batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch), pct_start=0.15
    )
    epoch_losses: list[float] = []
    t0 = time.perf_counter()
    for _ in progress_bar(range(epochs), progress, desc, total=epochs):
        net.train()
        order = torch.randperm(num_samples, generator=generator)  # (N,)
        if drop_last:
            order = order[: steps_per_epoch * batch_size]
        losses = []
        for idx in order.split(batch_size):
            loss = batch_loss(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        epoch_losses.append(sum(losses) / max(1, len(losses)))
    seconds = time.perf_counter() - t0
    net.eval()
    return FitSummary(epoch_losses, seconds)


def progress_bar(iterable: Iterable, enabled: bool, desc: str, total: int | None = None) -> Iterable:
    """``iterable``, wrapped in a tqdm bar when ``enabled``."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, dynamic_ncols=True)
