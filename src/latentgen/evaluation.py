"""Evaluation of checkpoints: reconstructions of autoencoders, samples of latent models.

``evaluate.py ckpt=...`` rebuilds the system from the checkpoint's own config (``latentgen.run``),
optionally swapping the sampler, its steps and the guidance scale, and writes ``metrics.json`` in
its run dir: every number with the feature extractor, the number of samples, the sampler and the
NFE beside it. The same :func:`generator_metrics` is used by the in-training evaluation callback,
so FID during training and FID from ``evaluate.py`` are the same computation.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import make_grid, save_image

from latentgen.errors import ConfigError
from latentgen.metrics.feature_stats import rank_and_world

log = logging.getLogger("latentgen")


# ---------------------------------------------------------------------------------------------- helpers
def default_device() -> torch.device:
    """The accelerator torch sees (CUDA, MPS, XPU ...) or the CPU; never a hard-coded name."""
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    return accelerator if accelerator is not None else torch.device("cpu")


def as_rgb(images: torch.Tensor) -> torch.Tensor:
    """Grayscale (B, 1, H, W) -> (B, 3, H, W); feature extractors take RGB."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
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


def save_grid(images: torch.Tensor, path: Path) -> torch.Tensor:
    images = ((images.float().cpu() + 1) / 2).clamp(0, 1)
    grid = make_grid(images, nrow=max(1, int(math.sqrt(images.shape[0]))), padding=1, pad_value=1.0)  # (C, H', W')
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    return grid


def _nfe(system, steps: int | None) -> float:
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
    metrics: list[str],
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

    Returns (metrics, the first batch of samples in [-1, 1]). The real-data reference features are
    cached on disk, keyed by dataset config, split, resolution, extractor and sample count.

    Under DDP every rank must call this (it is collective): rank r samples the condition batches
    r, r + world, ... (batch i always with the noise of :func:`batch_generator`), the features are
    gathered by :class:`GenerativeMetrics`, and every rank returns the same metrics, equal to a
    one-process evaluation's. ``datamodule`` must not be the trainer's own (its loaders would be
    sharded already): a detached one iterates the data in the same order on every rank. On a cache
    miss the reference features are extracted the same way, rank r taking real batches r, r + world, ...
    """
    from latentgen.metrics.feature_stats import GenerativeMetrics, ReferenceCache, ReferenceKey, reference_features

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

        batches = track(batches, total=math.ceil(num_samples / batch_size), description=f"sampling {num_samples} images")
    for index, batch in batches:
        if index % world != rank:
            continue
        batch = _to_device(batch, device)
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
            "nfe": _nfe(system, steps),
        }
    )
    # Wall seconds per phase: real features (or cache read), sampling, features of the samples, metric math.
    results.update({f"seconds_{phase}": float(v) for phase, v in seconds.items()})
    return results, first


# ---------------------------------------------------------------------------------------------- autoencoder
@torch.no_grad()
def reconstruct_val_split(datamodule, reconstruct, rec, rfid, num_samples: int, device) -> torch.Tensor | None:
    """Feed (up to ``num_samples`` of) the val split and ``reconstruct(x)`` of it into the metrics ``rec``
    (ReconstructionMetrics) and ``rfid`` (GenerativeMetrics or None). Under DDP each rank takes batches
    rank, rank + world, ...; the metrics gather them on compute(). Returns the first 32 originals and
    their reconstructions (this rank's first batch), or None when this rank had no batch."""
    rank, world = rank_and_world()
    first = None
    seen = 0
    for index, batch in enumerate(datamodule.val_dataloader()):
        x = batch["image"][: num_samples - seen]  # (B, C, H, W)
        seen += x.shape[0]
        if index % world == rank:
            x = x.to(device)
            recon = reconstruct(x)  # (B, C, H, W)
            if first is None:
                first = torch.cat([x[:32], recon[:32]]).cpu()  # (2 * min(B, 32), C, H, W)
            rec.update(recon, x)
            if rfid is not None:
                rfid.update(as_rgb(x), real=True)
                rfid.update(as_rgb(recon), real=False)
        if seen >= num_samples:
            break
    return first


@torch.no_grad()
def autoencoder_metrics(system, datamodule, extractor, *, batch_size: int, num_samples: int, progress: bool = True):
    """PSNR / SSIM / LPIPS (mean and std) of reconstructions of the val split, and rFID with an extractor."""
    from latentgen.metrics.feature_stats import GenerativeMetrics
    from latentgen.metrics.reconstruction import ReconstructionMetrics

    datamodule.setup("validate")
    perceptual = getattr(system.loss, "perceptual", None)
    use_lpips = perceptual is not None and getattr(perceptual, "name", "none") != "none"
    rec = ReconstructionMetrics(lpips=perceptual if use_lpips else None).to(system.device)
    rfid = GenerativeMetrics(extractor, metrics=["fid"]).to(system.device) if extractor is not None else None
    first = reconstruct_val_split(datamodule, system.reconstruct, rec, rfid, num_samples, system.device)
    results = dict(rec.compute())
    if rfid is not None:
        results["rfid"] = rfid.compute()["fid"]
    if use_lpips:
        results["lpips_network"] = perceptual.name
    return results, first


# ---------------------------------------------------------------------------------------------- prompts
@torch.no_grad()
def prompt_samples(system, cfg: DictConfig, device: torch.device) -> tuple[dict[str, Any], torch.Tensor]:
    """``prompt=...``: ``num_samples`` images per prompt (a string or a list), prompt-major.

    With ``attribute_classifier=<path>`` (shapes models) the alignment of the samples with their
    prompts is measured as in experiments/shapes_conditioning (attribute_alignment).
    """
    from latentgen.conditioning.prompts import batch_from_prompts, check_prompt_supported

    check_prompt_supported(system.conditioner)
    prompts = [cfg.prompt] if isinstance(cfg.prompt, str) else [str(p) for p in cfg.prompt]
    captions = batch_from_prompts(prompts, int(cfg.num_samples))["caption"]
    gen = torch.Generator().manual_seed(int(cfg.seed))
    size = int(cfg.batch_size)
    start = time.time()
    chunks = [system.sample({"caption": captions[i : i + size]}, generator=gen).cpu() for i in range(0, len(captions), size)]
    images = torch.cat(chunks)  # (P * num_samples, C, H, W)
    results: dict[str, Any] = {
        "sampling_images_per_s": images.shape[0] / max(time.time() - start, 1e-9),
        "num_samples": float(images.shape[0]),
        "nfe": _nfe(system, None),
        "prompts": prompts,
    }
    if cfg.get("attribute_classifier"):
        from latentgen.conditioning.attribute_classifier import attribute_alignment, load_attribute_classifier

        classifier = load_attribute_classifier(cfg.attribute_classifier)
        results.update(attribute_alignment(classifier, images, captions))
    return results, images


# ---------------------------------------------------------------------------------------------- entry point
def _overrides(cfg: DictConfig) -> dict[str, Any]:
    """The nodes of the stored config that this evaluation replaces (sampler, guidance scale)."""
    over: dict[str, Any] = {}
    if cfg.get("sampler") is not None:
        sampler = OmegaConf.to_container(cfg.sampler, resolve=True)
        over["sampler"] = sampler
        over["model.sampler"] = sampler
    scale = cfg.get("guidance", {}).get("scale")
    if scale is not None:
        over["guidance.scale"] = float(scale)
        over["model.guidance_scale"] = float(scale)
    return over


def _join_torchrun(device: torch.device) -> tuple[torch.device, bool]:
    """Under ``torchrun --nproc_per_node=N evaluate.py ...`` (WORLD_SIZE > 1 in the environment) join
    the process group, one accelerator per local rank. Returns (device, whether we initialised it)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return device, False
    if device.type != "cpu":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.accelerator.set_device_index(local_rank)
        device = torch.device(device.type, local_rank)
    torch.distributed.init_process_group(backend=torch.distributed.get_default_backend_for_device(device))
    return device, True


def run_evaluation(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt``; with several processes (torchrun) every rank shares the work and rank 0 writes."""
    device = default_device() if cfg.get("device", "auto") == "auto" else torch.device(cfg.device)
    device, joined = _join_torchrun(device)
    try:
        return _run_evaluation(cfg, device)
    finally:
        if joined:
            torch.distributed.destroy_process_group()


def _run_evaluation(cfg: DictConfig, device: torch.device) -> dict[str, Any]:
    from latentgen.run import (
        build_logger,
        check_output_dir,
        instantiate,
        load_system_from_checkpoint,
        silence_expected_warnings,
        to_container,
        write_json,
    )

    silence_expected_warnings()
    L.seed_everything(cfg.seed, workers=True)
    out_dir = check_output_dir(cfg.paths.output_dir)
    system, stored = load_system_from_checkpoint(str(cfg.ckpt), _overrides(cfg))
    system = system.to(device).eval()
    rank, world = rank_and_world()
    datamodule = instantiate(stored.data)
    extractor = instantiate(cfg.extractor) if cfg.get("extractor") else None
    record: dict[str, Any] = {"kind": system.kind, "ckpt": str(cfg.ckpt), "device": str(device)}
    if extractor is not None:
        record["extractor"] = {"name": extractor.name, "weights": extractor.weights_label}

    if system.kind == "autoencoder":
        if cfg.get("prompt") not in (None, "", []):
            raise ConfigError(f"prompt=... needs a text-conditioned latent model; '{cfg.ckpt}' is an autoencoder")
        results, images = autoencoder_metrics(system, datamodule, extractor, batch_size=int(cfg.batch_size),
                                              num_samples=int(cfg.num_samples))
        record["num_samples"] = int(results.get("num_samples", 0))
    else:
        scale = float(stored.guidance.scale) if cfg.guidance.scale is None else float(cfg.guidance.scale)
        record.update(
            {
                "sampler": stored.model.sampler.get("_target_"),
                "steps": stored.model.sampler.get("steps"),
                "guidance_scale": scale,
            }
        )
        if cfg.get("prompt") not in (None, "", []):
            if world > 1:
                raise ConfigError("prompt=... samples in one process: run it without torchrun")
            results, images = prompt_samples(system, cfg, device)
            record["prompts"] = results.pop("prompts")
        elif extractor is None and world > 1:
            raise ConfigError("without an extractor evaluate.py only draws a grid: run it without torchrun")
        elif extractor is None:
            # Without an extractor only samples (a grid) and the sampling speed are produced.
            gen = torch.Generator().manual_seed(int(cfg.seed))
            datamodule.setup("validate")
            batch = _to_device(datamodule.fixed_batch(int(cfg.num_grid_samples)), device)
            start = time.time()
            images = system.sample(batch, generator=gen)
            results = {"sampling_images_per_s": images.shape[0] / (time.time() - start), "num_samples": float(images.shape[0])}
            log.warning("no extractor configured (extractor=...): only a sample grid was made, no FID")
        else:
            unknown = set(cfg.metrics) - {"fid", "kid", "is", "prc", "density_coverage"}
            if unknown:
                raise ConfigError(f"metrics={list(cfg.metrics)}: unknown {sorted(unknown)}")
            results, images = generator_metrics(
                system,
                datamodule,
                extractor,
                metrics=list(cfg.metrics),
                num_samples=int(cfg.num_samples),
                batch_size=int(cfg.batch_size),
                cache_dir=cfg.paths.cache_dir,
                dataset_config=to_container(stored.data),
                split=str(cfg.split),
                seed=int(cfg.seed),
            )
        record["nfe"] = results.get("nfe")
        record["num_samples"] = int(results.get("num_samples", 0))
    phases = pop_phase_seconds(results)
    if phases:
        record["seconds"] = phases  # wall time per phase of a generator evaluation
    record["metrics"] = results
    if world > 1:
        record["world_size"] = world
    if rank != 0:  # every rank holds the same numbers; rank 0 writes them
        return record
    grid = save_grid(images, out_dir / "samples.png")
    write_json(out_dir / "metrics.json", record)
    logger = build_logger(cfg.get("logger"), save_dir=str(out_dir)) if cfg.get("logger") else False
    if logger:
        logger.log_metrics({f"eval/{k}": v for k, v in results.items() if isinstance(v, (int, float))})
        if hasattr(logger, "log_image"):
            logger.log_image(key="eval/samples", images=[grid])
        logger.finalize("success")
    log.info("metrics: %s", results)
    return record
