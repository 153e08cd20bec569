"""Compute accounting: FLOPs of one denoiser forward+backward counted on a copy, memory peaks."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
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
    module = SimpleNamespace(
        latent_shape=shape,
        device=torch.device("cpu"),
        trainable=nn.ModuleDict({"denoiser": den, "conditioner": Unconditional()}),
    )
    flops = denoiser_train_flops(module, {"image": torch.zeros(3, 1, 16, 16)})
    # forward 2*n*n, backward: grad wrt the weight 2*n*n (the input needs no grad)
    assert flops == 4 * n * n
    assert den.lin.weight.grad is None, "the real denoiser must not get gradients"


def _proc_status_mib(field: str) -> float:
    """A ``VmRSS``/``VmHWM``-style line of /proc/self/status (kB) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the kernel's own figures in /proc")
def test_peak_cpu_rss_is_the_high_water_mark_in_mib():
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB of float32, written, so its pages are resident
    resident = _proc_status_mib("VmRSS")
    peak = peak_cpu_rss_mb()
    assert resident > 64
    assert peak >= resident - 1  # a peak is at least what is resident now (1 MiB for page rounding)
    assert peak == pytest.approx(_proc_status_mib("VmHWM"), abs=1.0)  # and is the kernel's high-water mark
    del block


def test_no_accelerator_peak_without_an_accelerator():
    if hasattr(torch, "accelerator") and torch.accelerator.is_available():
        pytest.skip("an accelerator is present")
    assert peak_accelerator_memory_mb() is None


@pytest.mark.gpu
@pytest.mark.skipif(not (hasattr(torch, "accelerator") and torch.accelerator.is_available()), reason="no accelerator")
def test_accelerator_peak_counts_a_new_allocation_in_mib():
    acc = torch.accelerator
    acc.reset_peak_memory_stats()
    before = acc.memory_allocated() / 2**20
    block = torch.ones(64 * 2**20 // 4, device=acc.current_accelerator())  # 64 MiB of float32
    peak = peak_accelerator_memory_mb()
    assert peak is not None and peak - before == pytest.approx(64, abs=2)
    del block
