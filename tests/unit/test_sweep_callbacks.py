"""Compute accounting: FLOPs of one denoiser forward+backward counted on a copy, memory peaks."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from latentgen.callbacks.compute_accounting import denoiser_train_flops, peak_accelerator_memory_mb, peak_cpu_rss_mb
from latentgen.conditioning.unconditional import Unconditional


class _Linear(nn.Module):
    """A 'denoiser' whose FLOPs are known: one (C*h*w -> C*h*w) matmul."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.lin = nn.Linear(n, n, bias=False)

    def forward(self, x, t, cond):
        return self.lin(x.flatten(1)).view_as(x)  # (B, C, h, w)


def test_flops_of_one_training_step_per_image_are_counted_on_a_copy():
    shape = (2, 4, 4)
    n = 2 * 4 * 4
    den = _Linear(n)
    module = SimpleNamespace(latent_shape=shape, device=torch.device("cpu"),
                             trainable=nn.ModuleDict({"denoiser": den, "conditioner": Unconditional()}))
    flops = denoiser_train_flops(module, {"image": torch.zeros(3, 1, 16, 16)})
    # forward 2*n*n, backward: grad wrt the weight 2*n*n (the input needs no grad)
    assert flops == 4 * n * n
    assert den.lin.weight.grad is None, "the real denoiser must not get gradients"


def test_memory_peaks():
    assert peak_cpu_rss_mb() > 10
    if not (hasattr(torch, "accelerator") and torch.accelerator.is_available()):
        assert peak_accelerator_memory_mb() is None
