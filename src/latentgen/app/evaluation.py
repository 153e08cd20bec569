"""The evaluation root: ``evaluate(cfg)`` measures one checkpoint and writes ``metrics.json``.

1. join the process group when started by ``torchrun`` (every rank shares the work, rank 0 writes);
2. rebuild the system from the checkpoint's own config (every ``_target_`` checked against the allow-list
   first), optionally with another sampler, step count or guidance scale;
3. measure it: an autoencoder by its reconstructions of the val split; a latent model by samples compared
   with real images in feature space (FID & co.), by samples for prompts, or by a sample grid alone;
4. write ``metrics.json`` (every number with the extractor, sample count, sampler and NFE beside it, and the
   latent contract of the first stage), ``samples.png``, and log to the configured logger.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from latentgen.app.building import (
    build_logger,
    check_output_dir,
    latent_contract,
    load_system_from_checkpoint,
    silence_expected_warnings,
)
from latentgen.config import instantiate, to_container
from latentgen.errors import ConfigError
from latentgen.files import atomic_write_json
from latentgen.images import save_grid
from latentgen.logging import finish_wandb_run, stored_wandb_run
from latentgen.metrics.autoencoder_evaluation import autoencoder_metrics
from latentgen.metrics.distributed import rank_and_world
from latentgen.metrics.generator_evaluation import generator_metrics, pop_phase_seconds, to_device
from latentgen.metrics.prompt_evaluation import prompt_samples
from latentgen.systems.autoencoder import AutoencoderSystem

log = logging.getLogger("latentgen")

# The smallest images the perceptual networks of conf/perceptual/ accept (ST-LPIPS-Alex fails on 16 px).
MIN_LPIPS_RESOLUTION = 32


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt``; returns the record written to ``metrics.json``."""
    silence_expected_warnings()
    device, joined = join_torchrun(chosen_device(cfg))
    try:
        return _evaluate(cfg, device)
    finally:
        if joined:
            torch.distributed.destroy_process_group()


def _evaluate(cfg: DictConfig, device: torch.device) -> dict[str, Any]:
    L.seed_everything(cfg.seed, workers=True)
    out_dir = check_output_dir(cfg.paths.output_dir)
    system, stored = load_system_from_checkpoint(str(cfg.ckpt), stored_overrides(cfg))
    system = system.to(device).eval()
    datamodule = instantiate(stored.data)
    extractor = instantiate(cfg.extractor) if cfg.get("extractor") else None
    record: dict[str, Any] = {"kind": system.kind, "ckpt": str(cfg.ckpt), "device": str(device)}
    if extractor is not None:
        record["extractor"] = {"name": extractor.name, "weights": extractor.weights_label}

    if isinstance(system, AutoencoderSystem):
        results, images = measure_autoencoder(cfg, system, datamodule, extractor, record)
        first_stage = system.autoencoder
    else:
        results, images = measure_generator(cfg, system, stored, datamodule, extractor, device, record)
        first_stage = system.first_stage
    record["latent"] = latent_contract(first_stage, int(stored.data.resolution))
    record["num_samples"] = int(results.get("num_samples", 0))
    phases = pop_phase_seconds(results)
    if phases:
        record["seconds"] = phases  # wall time per phase of a generator evaluation
    record["metrics"] = results
    rank, world = rank_and_world()
    if world > 1:
        record["world_size"] = world
    if rank == 0:  # every rank holds the same numbers; rank 0 writes them
        write_outputs(cfg, out_dir, record, results, images)
    return record


# ---------------------------------------------------------------------------------------------- steps
def chosen_device(cfg: DictConfig) -> torch.device:
    """``device=auto``: the accelerator torch sees (CUDA, MPS, XPU ...) or the CPU; never a hard-coded name."""
    if cfg.get("device", "auto") != "auto":
        return torch.device(cfg.device)
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    return accelerator if accelerator is not None else torch.device("cpu")


def join_torchrun(device: torch.device) -> tuple[torch.device, bool]:
    """Under ``torchrun --nproc_per_node=N evaluate.py ...`` (WORLD_SIZE > 1 in the environment) join the
    process group, one accelerator per local rank. Returns (device, whether this call initialised it)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return device, False
    if device.type != "cpu":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.accelerator.set_device_index(local_rank)
        device = torch.device(device.type, local_rank)
    torch.distributed.init_process_group(backend=torch.distributed.get_default_backend_for_device(device))
    return device, True


def stored_overrides(cfg: DictConfig) -> dict[str, Any]:
    """The nodes of the checkpoint's config that this evaluation replaces (sampler, guidance scale)."""
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


def has_prompt(cfg: DictConfig) -> bool:
    return cfg.get("prompt") not in (None, "", [])


def measure_autoencoder(cfg, system, datamodule, extractor, record) -> tuple[dict[str, Any], torch.Tensor]:
    """Reconstructions of the val split: PSNR, SSIM, LPIPS with the evaluation's perceptual network, rFID."""
    if has_prompt(cfg):
        raise ConfigError(f"prompt=... needs a text-conditioned latent model; '{cfg.ckpt}' is an autoencoder")
    lpips = instantiate(cfg.perceptual) if cfg.get("perceptual") and cfg.perceptual.get("_target_") else None
    if lpips is not None and not lpips.measures_distance:
        lpips = None
    resolution = int(datamodule.resolution)
    if lpips is not None and resolution < MIN_LPIPS_RESOLUTION:
        # AlexNet-style networks pool 16 px images down to nothing (ST-LPIPS fails below 24 px).
        log.warning(
            "LPIPS is not reported: %d px images are below the %d px the perceptual network needs",
            resolution,
            MIN_LPIPS_RESOLUTION,
        )
        record["lpips_network"] = f"none ({resolution} px images are too small)"
        lpips = None
    if lpips is not None:
        lpips = lpips.to(system.device)
        record["lpips_network"] = lpips.name
    return autoencoder_metrics(system, datamodule, extractor, lpips, num_samples=int(cfg.num_samples))


def measure_generator(
    cfg, system, stored, datamodule, extractor, device, record
) -> tuple[dict[str, Any], torch.Tensor]:
    """Samples of a latent model: for prompts, as a grid alone (no extractor), or compared with real images."""
    _, world = rank_and_world()
    scale = float(stored.guidance.scale) if cfg.guidance.scale is None else float(cfg.guidance.scale)
    record.update(
        sampler=stored.model.sampler.get("_target_"), steps=stored.model.sampler.get("steps"), guidance_scale=scale
    )
    if has_prompt(cfg):
        if world > 1:
            raise ConfigError("prompt=... samples in one process: run it without torchrun")
        prompts = [cfg.prompt] if isinstance(cfg.prompt, str) else [str(p) for p in cfg.prompt]
        record["prompts"] = prompts
        results, images = prompt_samples(
            system, prompts, num_samples=int(cfg.num_samples), batch_size=int(cfg.batch_size), seed=int(cfg.seed),
            attribute_classifier=cfg.get("attribute_classifier"),
        )  # fmt: skip
    elif extractor is None:
        if world > 1:
            raise ConfigError("without an extractor evaluate.py only draws a grid: run it without torchrun")
        gen = torch.Generator().manual_seed(int(cfg.seed))
        datamodule.setup("validate")
        batch = to_device(datamodule.fixed_batch(int(cfg.num_grid_samples)), device)
        start = time.time()
        images = system.sample(batch, generator=gen)
        results = {
            "sampling_images_per_s": images.shape[0] / (time.time() - start),
            "num_samples": float(images.shape[0]),
        }
        log.warning("no extractor configured (extractor=...): only a sample grid was made, no FID")
    else:
        results, images = generator_metrics(
            system, datamodule, extractor, metrics=chosen_metrics(cfg), num_samples=int(cfg.num_samples),
            batch_size=int(cfg.batch_size), cache_dir=cfg.paths.cache_dir, dataset_config=to_container(stored.data),
            split=str(cfg.split), seed=int(cfg.seed),
        )  # fmt: skip
    record["nfe"] = results.get("nfe")
    return results, images


def join_training_group(logger_cfg: DictConfig | None, ckpt) -> DictConfig | None:
    """The evaluation logs into the W&B group of the run that wrote ``ckpt`` (``<run dir>/checkpoints/x.ckpt``),
    unless ``logger.group`` is given: the review of a run and its evaluations is in one place."""
    if logger_cfg is None or "group" not in logger_cfg or logger_cfg.get("group"):
        return logger_cfg
    training_run = stored_wandb_run(Path(str(ckpt)).resolve().parent.parent)
    if training_run is None:
        return logger_cfg
    logger_cfg = logger_cfg.copy()
    with open_dict(logger_cfg):
        logger_cfg.group = training_run["group"]
    return logger_cfg


def chosen_metrics(cfg: DictConfig) -> list[Any]:
    """The metrics of the ``metrics`` config group (conf/metrics/), built: one FeatureMetric per chosen file."""
    metrics = list(instantiate(cfg.metrics).values()) if cfg.get("metrics") else []
    if not metrics:
        raise ConfigError(
            "no metrics chosen: pick some from conf/metrics/, e.g. metrics=[fid,kid,prc,density_coverage]"
        )
    return metrics


def write_outputs(
    cfg: DictConfig, out_dir, record: dict[str, Any], results: dict[str, Any], images: torch.Tensor
) -> None:
    grid = save_grid(images, out_dir / "samples.png")
    atomic_write_json(out_dir / "metrics.json", record)
    logger = build_logger(join_training_group(cfg.get("logger"), cfg.ckpt))
    if logger:
        logger.log_metrics({f"eval/{k}": v for k, v in results.items() if isinstance(v, (int, float))})
        if hasattr(logger, "log_image"):
            logger.log_image(key="eval/samples", images=[grid])
        logger.finalize("success")
        finish_wandb_run()
    log.info("metrics: %s", results)
