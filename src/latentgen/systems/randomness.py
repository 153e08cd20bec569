"""Training noise that does not depend on how a global batch is split over devices.

Every random number of a training step of the latent model (each sample's condition-dropout draw, time
``t``, noise ``eps`` and KL posterior sample) is drawn for the whole GLOBAL batch from one generator seeded
by ``(run seed, batch count)``; each rank keeps the rows of its own samples. With the DataModule's
contiguous sharding (rank ``r`` of ``W`` holds positions ``r*B .. r*B + B - 1`` of every global batch of
``W*B``), a 2-process DDP run and a 1-process run with the same global batch draw identical noise for
identical samples, and a resumed run draws what the uninterrupted run drew, without restoring any RNG.

The draws are made on the batch's device (a CUDA generator costs microseconds); every rank draws the
global batch, ``W`` times its own share, which is small next to a training step (about 5 ms on one CPU
core for a global batch of 256 latents of 4x32x32).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def step_seed(seed: int, step: int) -> int:
    """A 63-bit seed from (run seed, batch count); numpy SeedSequence mixing (stable across versions)."""
    entropy = [int(w) & 0xFFFFFFFFFFFFFFFF for w in (seed, step)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) >> 1


@dataclass
class SampleNoise:
    """The draws for one rank's samples (float32, on the batch's device)."""

    drop_u: torch.Tensor  # (B,) uniform in [0, 1): a sample's condition is dropped if drop_u < drop_prob
    t: torch.Tensor  # (B,) training time from the objective's time sampler
    noise: torch.Tensor  # (B, C, h, w) eps (+ offset noise)
    posterior: torch.Tensor  # (B, C, h, w) N(0, I) for the KL posterior sample z = mean + std * posterior


def draw_sample_noise(
    *,
    seed: int,
    step: int,
    rank: int,
    world_size: int,
    batch_size: int,
    latent_shape: tuple[int, ...],
    time_sampler,
    offset_noise: float = 0.0,
    device: torch.device | str = "cpu",
) -> SampleNoise:
    """Draw the global batch's noise (``world_size * batch_size`` samples) and return rank ``rank``'s rows.

    The draws always come in the same order (u, t, eps, offset, posterior), so none of them depends on
    options that only change what is done with them.
    """
    n = world_size * batch_size
    g = torch.Generator(device=device).manual_seed(step_seed(seed, step))
    u = torch.rand(n, generator=g, device=device)  # (N,)
    t = time_sampler.sample(n, device, g).float()  # (N,)
    eps = torch.randn((n, *latent_shape), generator=g, device=device)  # (N, C, h, w)
    offset = torch.randn((n, latent_shape[0]) + (1,) * (len(latent_shape) - 1), generator=g, device=device)  # (N, C, 1, 1)
    if offset_noise > 0:
        eps = eps + offset_noise * offset
    post = torch.randn((n, *latent_shape), generator=g, device=device)  # (N, C, h, w)
    rows = slice(rank * batch_size, (rank + 1) * batch_size)
    return SampleNoise(drop_u=u[rows], t=t[rows], noise=eps[rows], posterior=post[rows])
