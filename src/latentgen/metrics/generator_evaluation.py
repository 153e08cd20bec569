"""The evaluation of a generator: samples of a latent model compared with real images in feature space.

:func:`generator_metrics` is THE computation behind FID & co. in latentgen: ``evaluate.py`` (the evaluation
root) and the in-training evaluation callback both call it, so FID during training and FID afterwards are
the same number for the same weights. Every number comes with the sample count, the sampler's NFE and the
wall time of each phase (reference features, sampling, sample features, metric maths).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from latentgen.metrics.distributed import rank_and_world
from latentgen.metrics.feature_metrics import FeatureMetric


# ---------------------------------------------------------------------------------------------- helpers
def as_rgb(images: torch.Tensor) -> torch.Tensor:
    """Grayscale (B, 1, H, W) -> (B, 3, H, W); feature extractors take RGB."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def batch_generator(seed: int, index: int) -> torch.Generator:
    """The noise of evaluation batch ``index``: one seed per batch, so that the samples are the same
    whichever rank draws the batch and however many ranks there are."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(index))


def pop_phase_seconds(results: dict[str, Any]) -> dict[str, float]:
    """Take the ``seconds_<phase>`` entries of :func:`generator_metrics`'s results out as ``{phase: s}``."""
    return {k.removeprefix("seconds_"): results.pop(k) for k in list(results) if k.startswith("seconds_")}


def condition_batches(datamodule, split: str, batch_size: int, num_samples: int) -> Iterator[dict[str, Any]]:
    """Batches whose labels/captions/masks condition the samples: drawn from the real data, cycled."""
    loader = datamodule.val_dataloader() if split == "val" else datamodule.train_dataloader()
    produced = 0
    while produced < num_samples:
        for batch in loader:
            n = min(batch_size, num_samples - produced, batch["image"].shape[0])
            yield {k: v[:n] for k, v in batch.items()}
            produced += n
            if produced >= num_samples:
                return


def sampler_nfe(system, steps: int | None) -> float:
    """Network evaluations per sample of the system's sampler (NaN when adaptive)."""
    n = system.sampler.nfe(steps) if hasattr(system.sampler, "nfe") else None
    return float("nan") if n is None else float(n)


# ---------------------------------------------------------------------------------------------- generator
@torch.no_grad()
def generator_metrics(
    system,
    datamodule,
    extractor,
    *,
    metrics: Sequence[FeatureMetric | str],
    num_samples: int,
    batch_size: int,
    cache_dir: str | Path | None,
    dataset_config: dict[str, Any],
    split: str = "train",
    steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    progress: bool = True,
) -> tuple[dict[str, float], torch.Tensor]:
    """Generate ``num_samples`` images (EMA weights) and compare their features with real ones.

    ``metrics`` are the :class:`~latentgen.metrics.feature_metrics.FeatureMetric` s to compute (as built from
    ``conf/metrics/``), or names of the built-in ones.
    Returns (metrics, the first batch of samples in [-1, 1]). The real-data reference features are
    cached on disk, keyed by dataset config, split, resolution, extractor and sample count.

    Under DDP every rank must call this (it is collective): rank r samples the condition batches
    r, r + world, ... (batch i always with the noise of :func:`batch_generator`), the features are
    gathered by :class:`GenerativeMetrics`, and every rank returns the same metrics, equal to a
    one-process evaluation's. ``datamodule`` must not be the trainer's own (its loaders would be
    sharded already): a detached one iterates the data in the same order on every rank. On a cache
    miss the reference features are extracted the same way, rank r taking real batches r, r + world, ...
    """
    from latentgen.metrics.generative_metrics import GenerativeMetrics
    from latentgen.metrics.reference_cache import ReferenceCache, ReferenceKey, reference_features

    datamodule.setup("fit" if split == "train" else "validate")
    available = len(datamodule.dataset(split))
    num_real = min(num_samples, available)
    device = system.device
    gm = GenerativeMetrics(extractor, metrics=metrics).to(device)
    key = ReferenceKey.create(
        dataset=dataset_config, split=split, resolution=datamodule.resolution, extractor=extractor, num_samples=num_real
    )
    start = time.perf_counter()
    ref = reference_features(
        ReferenceCache(cache_dir) if cache_dir else None,
        key,
        extractor,
        lambda: ({"image": as_rgb(b["image"])} for b in condition_batches(datamodule, split, batch_size, num_real)),
        device=device,
        progress=progress,
    )
    gm.set_reference(ref.features.to(device))
    seconds = {"reference": time.perf_counter() - start}  # ~0 when the reference features came from the cache

    rank, world = rank_and_world()
    first = None
    seconds.update(sampling=0.0, fake_features=0.0)
    produced = 0
    batches = enumerate(condition_batches(datamodule, split, batch_size, num_samples))
    if progress and rank == 0:
        from rich.progress import track

        batches = track(
            batches, total=math.ceil(num_samples / batch_size), description=f"sampling {num_samples} images"
        )
    for index, batch in batches:
        if index % world != rank:
            continue
        batch = to_device(batch, device)
        t0 = time.perf_counter()
        gen = batch_generator(seed, index)
        images = system.sample(batch, generator=gen, steps=steps, guidance_scale=guidance_scale)  # (b, C, H, W)
        t1 = time.perf_counter()
        if first is None:
            first = images.cpu()
        gm.update(as_rgb(images), real=False)
        seconds["sampling"] += t1 - t0
        seconds["fake_features"] += time.perf_counter() - t1
        produced += images.shape[0]
    if world > 1:  # the samples of all ranks
        total = torch.tensor([float(produced)], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(total)
        produced = int(total.item())
    t0 = time.perf_counter()
    results = dict(gm.compute())  # gathers the features of every rank
    seconds["metrics"] = time.perf_counter() - t0
    results.update(
        {
            "num_samples": float(produced),
            "num_reference": float(ref.features.shape[0]),
            "sampling_images_per_s": produced / max(seconds["sampling"], 1e-9),
            "nfe": sampler_nfe(system, steps),
        }
    )
    # Wall seconds per phase: real features (or cache read), sampling, features of the samples, metric math.
    results.update({f"seconds_{phase}": float(v) for phase, v in seconds.items()})
    return results, first
