"""Measure the latent scale (and optional shift) of a first stage from data, identically on every DDP rank.

Convention (LDM; docs/first_stage.md, "Latent scale and shift"):

- ``scale = 1 / std(z)``, the std over all latent elements of all measured batches (unbiased, as
  ``torch.std``), so that ``encode_scaled`` has unit variance. LDM computes it from one batch on rank 0
  only; here sums, sums of squares and counts over ``num_batches`` batches per rank are accumulated in
  float64 and ALL-REDUCED over ranks when ``torch.distributed`` is initialized, so every rank gets the
  same value.
- KL latents are **posterior samples** by default (``sample=True``), as LDM's ``scale_factor`` is
  the std of ``encode(x).sample()``. Pass ``sample=False`` to measure the posterior means.
- ``center=False`` (LDM, SD): ``shift = 0`` and the std is still taken around the mean.
  ``center=True``: ``shift = mean`` (as SD3 / FLUX do).
- ``rescale=False`` returns ``scale = 1``: VQ latents have a variance close to 1 and LDM does not
  rescale them (LDM App. D.1). The caller decides (e.g. ``rescale = not isinstance(reg, VectorQuantizer)``).

Typical use: ``ae.set_latent_stats(*measure_latent_stats(ae, datamodule.train_dataloader(), 16))``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.distributed as dist

from latentgen.autoencoders.autoencoder import Autoencoder
from latentgen.errors import DataError


@torch.no_grad()
def measure_latent_stats(
    autoencoder: Autoencoder,
    batches: Iterable[dict | torch.Tensor],
    num_batches: int,
    center: bool = False,
    rescale: bool = True,
    sample: bool = True,
    generator: torch.Generator | None = None,
    image_key: str = "image",
) -> tuple[float, float]:
    """Return ``(scale, shift)`` measured from up to ``num_batches`` batches (per rank) of ``batches``.

    Args:
        autoencoder: the (trained) first stage; put in eval mode while measuring, then restored.
        batches: dict batches (``batch[image_key]``: (B, C, H, W)) or image tensors.
        num_batches: how many batches each rank reads (fewer if the iterable ends first).
        center: also return the mean as ``shift`` (else 0).
        rescale: return ``scale = 1/std`` (else 1.0, e.g. for VQ latents).
        sample: KL posterior samples (LDM) rather than means; ignored by VQ/identity.
        generator: optional generator for the posterior samples.
    Returns:
        ``(scale, shift)`` as Python floats, the same on every rank.
    """
    if num_batches < 1:
        raise DataError(f"measure_latent_stats: num_batches={num_batches} must be >= 1")
    ref = autoencoder.latent_scale  # a buffer, always on the model's device
    was_training = autoencoder.training
    autoencoder.eval()
    stats = torch.zeros(3, dtype=torch.float64, device=ref.device)  # [sum z, sum z^2, count]
    try:
        for i, batch in enumerate(batches):
            if i >= num_batches:
                break
            x = batch[image_key] if isinstance(batch, dict) else batch
            z = autoencoder.encode(x.to(ref.device), sample=sample, generator=generator).double()  # (B, C, h, w)
            stats += torch.stack([z.sum(), z.pow(2).sum(), torch.tensor(float(z.numel()), device=z.device).double()])
    finally:
        autoencoder.train(was_training)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(stats, op=dist.ReduceOp.SUM)  # every rank: the same global sums
    s1, s2, n = stats.tolist()
    if n < 2:
        raise DataError(f"measure_latent_stats: got {int(n)} latent elements from the batches; need at least 2")
    mean = s1 / n
    var = max(s2 - n * mean * mean, 0.0) / (n - 1)  # unbiased, as torch.std
    std = math.sqrt(var)
    if rescale and not (std > 0 and math.isfinite(std)):
        raise DataError(f"measure_latent_stats: latent std is {std}; cannot rescale (are the images constant?)")
    scale = 1.0 / std if rescale else 1.0
    shift = mean if center else 0.0
    return scale, shift
