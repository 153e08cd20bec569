"""The training root: ``train(cfg)`` runs one training job as the stages it consists of.

An autoencoder run (``model=autoencoder``) is stage 1 alone. A latent-model run goes through

1. **first stage**: the configured ``first_stage.ckpt``; or an identical finished autoencoder from
   ``paths.first_stage_cache``; or one trained now into that cache (under a file lock, so concurrent jobs of
   a sweep that need the same autoencoder train it once);
2. **latent statistics**: measured at the end of stage 1 and stored in the autoencoder's buffers (scale and
   shift travel with its checkpoint and export);
3. **latent cache**: with ``data.cache_latents`` the training split is encoded once;
4. **latent model**: the denoiser trained on those latents; final validation, ``last.ckpt`` and
   ``metrics.json`` (with the latent contract: f, latent channels, scale, shift).

A config with a ``sweep`` node (``experiment=f_sweep``) runs as a sweep job (:mod:`latentgen.sweep.job`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from latentgen.app.building import (
    build_latent_system,
    latent_contract,
    build_logger,
    build_trainer,
    check_output_dir,
    is_autoencoder_run,
    scalar_metrics,
    silence_expected_warnings,
    system_options,
)
from latentgen.app.few_step import is_student_run, train_student
from latentgen.app.run_checks import check_run_config
from latentgen.autoencoders.autoencoder import Autoencoder
from latentgen.autoencoders.frozen import export_first_stage
from latentgen.autoencoders.latent_stats import measure_latent_stats
from latentgen.callbacks.preemption import PREEMPTED_EXIT_CODE
from latentgen.config import config_hash, hydra_choice, instantiate, to_container
from latentgen.data.latent_cache import CachedLatentDataset, load_or_build_latent_cache
from latentgen.errors import ConfigError, DataError
from latentgen.files import exclusive_lock, write_json_rank_zero
from latentgen.logging import finish_wandb_run, forget_wandb_run
from latentgen.sweep.job import run_sweep_job
from latentgen.systems.autoencoder import AutoencoderSystem
from latentgen.systems.weights_export import export_latent_model_weights

log = logging.getLogger("latentgen")


def train(cfg: DictConfig) -> dict[str, float]:
    """Train the configured system; returns the final validation metrics (also in ``metrics.json``)."""
    silence_expected_warnings()
    if cfg.get("sweep") is not None:
        return run_sweep_job(cfg, _train)  # finishes the job's W&B run with its exit status
    try:
        metrics = _train(cfg)
    except BaseException:
        finish_wandb_run(exit_code=1)
        raise
    finish_wandb_run()
    return metrics


def _train(cfg: DictConfig) -> dict[str, float]:
    L.seed_everything(cfg.seed, workers=True)
    output_dir = check_output_dir(cfg.paths.output_dir)
    check_run_config(cfg)  # after seeding: what it builds draws from the seeded RNG, as it always did
    if is_student_run(cfg):
        return train_student(cfg, output_dir)  # the third stage: a few-step student of a trained latent model
    if is_autoencoder_run(cfg.model):
        return train_first_stage(cfg, output_dir)
    first_stage_ckpt = first_stage_for(cfg)  # stages 1 and 2
    L.seed_everything(cfg.seed, workers=True)
    return train_latent_model(cfg, first_stage_ckpt, output_dir)  # stages 3 and 4


# ---------------------------------------------------------------------------------------------- stages 1 + 2
def train_first_stage(cfg: DictConfig, output_dir: Path) -> dict[str, float]:
    """Train the autoencoder of ``cfg.model``, measure its latent statistics, save ``last.ckpt``, the
    safetensors export and ``metrics.json``."""
    ckpt_dir = output_dir / "checkpoints"
    resume_from = resolve_resume_path(cfg, ckpt_dir)
    logger = build_run_logger(cfg, output_dir, resuming=resume_from is not None)
    system: AutoencoderSystem = instantiate(cfg.model, **system_options(cfg, latent=False))
    datamodule = instantiate(cfg.data)
    trainer = build_trainer(cfg, trainer_cfg=cfg.trainer, logger=logger)
    start = time.time()
    pretrained = system.autoencoder.pretrained  # e.g. autoencoder=diffusers: frozen, its own latent stats
    if system.autoencoder.is_trainable:
        fit(trainer, system, datamodule, resume_from)
    else:
        log.info(
            "autoencoder=%s has nothing to train (%s); exporting it as is",
            cfg.autoencoder.get("_target_"),
            f"pretrained first stage '{pretrained}'" if pretrained else "identity first stage",
        )
    if pretrained is None:
        measure_latent_statistics(system, datamodule)
    metrics: dict[str, Any] = {}
    if system.autoencoder.is_trainable or pretrained is not None:  # a pretrained one: its reconstruction metrics
        metrics = scalar_metrics(trainer.validate(system, datamodule=datamodule, verbose=False)[0])
        trainer.save_checkpoint(ckpt_dir / "last.ckpt", weights_only=False)  # full state: resumable
    if trainer.is_global_zero:
        export_first_stage(system.autoencoder, to_container(cfg.autoencoder), ckpt_dir / "autoencoder.safetensors")
    # Other DDP ranks load this export next (second stage): wait until rank 0 has written it.
    trainer.strategy.barrier("first-stage export")
    metrics.update(
        latent_scale=float(system.autoencoder.latent_scale),
        latent_shift=float(system.autoencoder.latent_shift),
        train_wall_time_s=time.time() - start,
        global_step=trainer.global_step,
    )
    write_run_record(output_dir, system.kind, metrics, cfg, system.autoencoder)
    return metrics


def measure_latent_statistics(system: AutoencoderSystem, datamodule) -> None:
    """Stage 2: the latent scale (1/std) and shift on training batches, all-reduced across ranks, into the
    autoencoder's buffers when its regularizer rescales latents (``rescale_latents``: KL always, VQ only with
    ``autoencoder.regularizer.rescale_latents=true``); otherwise the scale stays 1 and the log says so."""
    autoencoder = system.autoencoder
    rescale = autoencoder.regularizer.rescale_latents

    def measure(with_scale: bool) -> tuple[float, float]:
        batches = (b["image"].to(system.device) for b in datamodule.train_dataloader())
        return measure_latent_stats(autoencoder, batches, system.latent_stats_batches, rescale=with_scale)

    try:
        scale, shift = measure(True)  # also for latents that are not rescaled: the log reports their scale
    except DataError:
        if rescale:
            raise
        measure(False)  # no latents at all still fails; constant latents (std 0) just have no scale to report
        scale, shift = float("nan"), 0.0
    if rescale:
        autoencoder.set_latent_stats(scale, shift)
        log.info("latent scale %.5f shift %.5f (1/std of the latents, applied to the latents)", scale, shift)
    else:
        autoencoder.set_latent_stats(1.0, 0.0)
        log.info(
            "latent scale stays 1 (measured 1/std would be %.5f): %s latents are not rescaled; set "
            "autoencoder.regularizer.rescale_latents=true to rescale them",
            scale,
            type(autoencoder.regularizer).__name__,
        )


def first_stage_for(cfg: DictConfig) -> str | None:
    """Stage 1 of a latent-model run: the first-stage file to load (None for the identity)."""
    if cfg.first_stage.ckpt:
        return str(cfg.first_stage.ckpt)
    if not instantiate(cfg.autoencoder).is_trainable:
        return None
    run_cfg = first_stage_run_config(cfg)
    out_dir = Path(run_cfg.paths.output_dir)
    export = out_dir / "checkpoints" / "autoencoder.safetensors"

    def finished() -> bool:
        return export.is_file() and (out_dir / "metrics.json").is_file()

    if not finished():
        # Concurrent jobs (a joblib sweep) that need the same autoencoder: one trains, the others wait and reuse.
        with exclusive_lock(out_dir.with_name(out_dir.name + ".lock"), enabled=is_launching_process()):
            if not finished():
                log.info("training the first stage into %s", out_dir)
                check_output_dir(out_dir)
                train_first_stage(run_cfg, out_dir)
                finish_wandb_run()  # the latent model logs into its own run
                return str(export)
    log.info("reusing the finished first stage %s", out_dir)
    return str(export)


def first_stage_run_config(cfg: DictConfig) -> DictConfig:
    """The config of the autoencoder run a latent-model run needs: this run's, with ``first_stage.model`` as
    the system, the first-stage trainer and data settings, and its own dir in ``paths.first_stage_cache``
    named by the autoencoder choice and a hash of everything that decides its weights."""
    trainer_cfg = OmegaConf.merge(cfg.trainer, cfg.first_stage.get("trainer") or {})
    data_cfg = OmegaConf.merge(OmegaConf.create(to_container(cfg.data)), cfg.first_stage.get("data") or {})
    key = config_hash(cfg.autoencoder, cfg.first_stage.model, data_cfg, trainer_cfg.max_steps, cfg.seed)
    out_dir = Path(cfg.paths.first_stage_cache) / f"{hydra_choice('autoencoder', 'autoencoder')}-{key}"
    run_cfg = cfg.copy()
    with open_dict(run_cfg):
        run_cfg.model = cfg.first_stage.model
        run_cfg.trainer = trainer_cfg
        run_cfg.data = data_cfg
        run_cfg.paths.output_dir = str(out_dir)  # checkpoints, grids and logs of the callbacks go there too
    return run_cfg


def is_launching_process() -> bool:
    """True in the process a user started (not in a DDP child Lightning launched, nor in a rank > 0 of
    torchrun or srun): only that process takes the first-stage lock, so the ranks of one job never wait
    on each other."""
    import os

    ranks = (os.environ.get(k) for k in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))
    return all(r in (None, "", "0") for r in ranks)


# ---------------------------------------------------------------------------------------------- stages 3 + 4
def train_latent_model(cfg: DictConfig, first_stage_ckpt: str | None, output_dir: Path) -> dict[str, float]:
    with open_dict(cfg):
        cfg.first_stage.ckpt = first_stage_ckpt  # recorded in the checkpoint's config
    system = build_latent_system(cfg, first_stage_ckpt)
    datamodule = instantiate(cfg.data)
    if datamodule.cache_latents:
        attach_latent_cache(cfg, system, datamodule)
    resume_from = resolve_resume_path(cfg, output_dir / "checkpoints")
    logger = build_run_logger(cfg, output_dir, resuming=resume_from is not None)
    trainer = build_trainer(cfg, trainer_cfg=cfg.trainer, logger=logger)
    if trainer.logger is not None:  # f, latent channels, scale, shift from the autoencoder itself, for the run's review
        trainer.logger.log_hyperparams({"latent": latent_contract(system.first_stage, int(cfg.data.resolution))})
    start = time.time()
    fit(trainer, system, datamodule, resume_from)
    wall = time.time() - start
    metrics = scalar_metrics(trainer.validate(system, datamodule=datamodule, verbose=False)[0])
    metrics.update(train_wall_time_s=wall, global_step=trainer.global_step)
    trainer.save_checkpoint(output_dir / "checkpoints" / "last.ckpt", weights_only=False)  # full state: resumable
    if trainer.is_global_zero:  # model.safetensors, model_ema.safetensors, model.json for others to use
        export_latent_model_weights(
            system.trainable, system.ema.shadow, to_container(cfg.model), output_dir / "checkpoints"
        )
    write_run_record(output_dir, system.kind, metrics, cfg, system.first_stage)
    return metrics


def attach_latent_cache(cfg: DictConfig, system, datamodule) -> Path:
    """Stage 3: encode the training split once (or load the matching cache) and train from it."""
    datamodule.setup("fit")
    base = datamodule.dataset("train")
    data_cfg = to_container(cfg.data)
    for loader_only in ("batch_size", "val_batch_size", "num_workers"):  # they do not change the latents
        data_cfg.pop(loader_only, None)
    cache, path = load_or_build_latent_cache(system.first_stage, base, cfg.paths.cache_dir, data_cfg)
    datamodule.use_train_dataset(CachedLatentDataset(cache, base, seed=datamodule.seed))
    return path


# ---------------------------------------------------------------------------------------------- shared steps
def build_run_logger(cfg: DictConfig, output_dir: Path, *, resuming: bool):
    """The run's logger; a resumed run continues its W&B run (id kept in the run dir), a fresh one starts anew."""
    if not resuming:
        forget_wandb_run(output_dir)
    return build_logger(cfg.get("logger"))


def fit(trainer: L.Trainer, system, datamodule, ckpt_path: str | None) -> None:
    """``trainer.fit``; a run stopped by SIGTERM (its checkpoint written by the pre-emption callback) exits
    with :data:`PREEMPTED_EXIT_CODE` instead of going on to the final validation and export."""
    try:
        trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        log.warning("training stopped by SIGTERM after global step %d; resume with ckpt_path=last", trainer.global_step)
        raise SystemExit(PREEMPTED_EXIT_CODE) from None


def resolve_resume_path(cfg: DictConfig, ckpt_dir: Path) -> str | None:
    """``ckpt_path``: null (fresh), ``last`` (must exist), ``auto`` (last if it exists), or a file."""
    ckpt = cfg.get("ckpt_path")
    if ckpt in (None, ""):
        return None
    if ckpt in ("last", "auto"):
        last = ckpt_dir / "last.ckpt"
        if ckpt == "auto" and not last.is_file():
            return None  # a fresh start (e.g. the first attempt of a job that is requeued with the same command)
        if not last.is_file():
            raise ConfigError(
                f"ckpt_path=last but '{last}' does not exist. Resume in the run dir of the killed run: "
                "python train.py <same overrides> hydra.run.dir=<that run dir> ckpt_path=last"
            )
        return str(last)
    if not Path(ckpt).is_file():
        raise ConfigError(f"ckpt_path='{ckpt}' does not exist")
    return str(ckpt)


def write_run_record(
    output_dir: Path, kind: str, metrics: dict[str, Any], cfg: DictConfig, autoencoder: Autoencoder
) -> None:
    """``metrics.json``: the final metrics, the latent contract of the run's first stage, the resolved config."""
    record = {
        "kind": kind,
        "metrics": metrics,
        "latent": latent_contract(autoencoder, int(cfg.data.resolution)),
        "config": to_container(cfg),
    }
    write_json_rank_zero(output_dir / "metrics.json", record)
