"""The composition root: ``train(cfg)`` and ``evaluate(cfg)`` build every object from the config.

``train.py`` and ``evaluate.py`` are thin Hydra entry points that call these functions; nothing else
in latentgen reads a config. A latent-model run whose ``first_stage.ckpt`` is null trains its
autoencoder first (or reuses an identical finished one from ``paths.first_stage_cache``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class
from hydra.utils import instantiate as hydra_instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from latentgen.autoencoders.frozen import export_first_stage, load_first_stage
from latentgen.autoencoders.latent_stats import measure_latent_stats
from latentgen.callbacks.checkpoint import ConfigInCheckpoint
from latentgen.callbacks.resilience import PREEMPTED_EXIT_CODE
from latentgen.checkpoint import CONFIG_KEY, AtomicCheckpointIO, read_latentgen_checkpoint
from latentgen.errors import ConfigError, LatentgenError
from latentgen.files import atomic_write_json, probe_writable
from latentgen.systems.autoencoder import AutoencoderSystem

log = logging.getLogger("latentgen")


def silence_expected_warnings() -> None:
    """Hide Lightning warnings that describe intended behaviour here (and only those)."""
    # Frozen parts (first stage, perceptual network, EMA copy) are in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    # The autoencoder checkpoints after its optimizer step on purpose (manual optimization).
    warnings.filterwarnings("ignore", message=r"Using ModelCheckpoint with manual optimization")
    # Lightning 2.6 on torch 2.14 (MACHINE-NOTES).
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")

# Module prefixes a config may instantiate. Configs read back from checkpoints are checked against
# this list before anything is built, so a crafted checkpoint cannot name an arbitrary callable.
ALLOWED_TARGET_PREFIXES = ("latentgen.", "torch.optim.", "torch.nn.", "lightning.pytorch.")


# ---------------------------------------------------------------------------------------------- config
def instantiate(node: Any, *args: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, but our own errors come out as themselves, not wrapped by Hydra."""
    try:
        return hydra_instantiate(node, *args, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, LatentgenError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from e
        raise


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers (what checkpoints, metrics.json and W&B store)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def _allowed_target(target: str) -> bool:
    """The dotted path starts with an allowed prefix AND names a callable defined in an allowed module.

    The second test matters: ``latentgen.run.os.system`` starts with ``latentgen.`` but reaches
    ``os.system`` through a module attribute. Resolving the path imports only modules under the
    allowed prefixes (the path must start with one) and calls nothing.
    """
    if not target.startswith(ALLOWED_TARGET_PREFIXES):
        return False
    from hydra.utils import get_object

    try:
        obj = get_object(target)
    except Exception:  # noqa: BLE001 - an unresolvable target is simply not allowed
        return False
    module = getattr(obj, "__module__", None) or ""
    return callable(obj) and f"{module}.".startswith(ALLOWED_TARGET_PREFIXES)


def check_targets(node: Any, where: str = "config") -> None:
    """Raise ConfigError if any ``_target_`` in ``node`` is not allowed (see :func:`_allowed_target`)."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and not _allowed_target(str(target)):
            raise ConfigError(
                f"{where}: _target_ '{target}' is not allowed: configs read from checkpoints may only build "
                f"classes and functions defined under {ALLOWED_TARGET_PREFIXES}"
            )
        for k, v in node.items():
            check_targets(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            check_targets(v, f"{where}[{i}]")


def is_autoencoder_run(model_cfg: DictConfig) -> bool:
    return issubclass(get_class(model_cfg._target_), AutoencoderSystem)


def config_hash(*nodes: Any) -> str:
    blob = json.dumps([OmegaConf.to_container(n, resolve=True) if isinstance(n, DictConfig) else n for n in nodes], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def check_output_dir(path: str | os.PathLike) -> Path:
    """Fail at start-up (not after an hour of training) if the run dir cannot be written."""
    path = Path(path)
    try:
        probe_writable(path)
    except OSError as e:
        raise ConfigError(f"output dir '{path}' is not writable ({e.strerror}); set hydra.run.dir or paths.root_dir") from e
    return path


def hydra_choice(group: str, default: str) -> str:
    """The option chosen for a config group in the running Hydra app (``default`` outside one)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().runtime.choices.get(group, default))
    except ValueError:
        return default


# ---------------------------------------------------------------------------------------------- building
def build_logger(logger_cfg: DictConfig | None, **overrides: Any):
    if logger_cfg is None or not logger_cfg.get("_target_"):
        return False
    return instantiate(logger_cfg, **overrides)


def build_trainer(cfg: DictConfig, *, trainer_cfg: DictConfig, output_dir: Path, config_dict: dict, logger) -> L.Trainer:
    callbacks = []
    for name, cb_cfg in (cfg.get("callbacks") or {}).items():
        if cb_cfg is None:
            continue
        if not logger and str(cb_cfg.get("_target_", "")).endswith("LearningRateMonitor"):
            continue  # it needs a logger to write to
        overrides = {}
        if name == "model_checkpoint":
            overrides["dirpath"] = str(output_dir / "checkpoints")
        elif name == "image_grid":
            overrides["out_dir"] = str(output_dir / "images")
        callbacks.append(instantiate(cb_cfg, **overrides))
    callbacks.append(ConfigInCheckpoint(config_dict))
    return instantiate(
        trainer_cfg, callbacks=callbacks, logger=logger, plugins=[AtomicCheckpointIO()], default_root_dir=str(output_dir)
    )


def system_options(cfg: DictConfig, *, latent: bool) -> dict[str, Any]:
    """Run-level options passed to the system's constructor (top-level keys of conf/config.yaml)."""
    opts: dict[str, Any] = {"nonfinite": str(cfg.get("nonfinite") or "raise")}
    if latent:
        opts.update(seed=int(cfg.get("seed") or 0), compile=bool(cfg.get("compile") or False))
    return opts


def fsdp_wrap_policy() -> set[type]:
    """FSDP units for ``trainer=fsdp``: every UNet block (ResBlock + transformer + resampling)."""
    from latentgen.networks.unet import UNetBlock

    return {UNetBlock}


def fit(trainer: L.Trainer, system, datamodule, ckpt_path: str | None) -> None:
    """``trainer.fit``; a run stopped by SIGTERM (checkpoint written by PreemptionCheckpoint) exits with
    :data:`PREEMPTED_EXIT_CODE` instead of continuing with the final validation and export."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        log.warning("training stopped by SIGTERM after global step %d; resume with ckpt_path=last", trainer.global_step)
        raise SystemExit(PREEMPTED_EXIT_CODE) from None


def build_first_stage(cfg: DictConfig, ckpt: str | None, *, check_config: bool = True):
    autoencoder = instantiate(cfg.autoencoder)
    expected = to_container(cfg.autoencoder) if check_config else None
    return load_first_stage(autoencoder, ckpt, expected_config=expected)


def build_latent_system(cfg: DictConfig, first_stage_ckpt: str | None, *, check_config: bool = True):
    first_stage = build_first_stage(cfg, first_stage_ckpt, check_config=check_config)
    return instantiate(cfg.model, first_stage=first_stage, **system_options(cfg, latent=True))


@rank_zero_only
def write_json(path: Path, obj: dict) -> None:
    atomic_write_json(path, obj)


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            out[k] = float(v)
        elif isinstance(v, (int, float)):
            out[k] = float(v)
    return out


# ---------------------------------------------------------------------------------------------- training
def _fit_autoencoder(cfg: DictConfig, model_cfg: DictConfig, trainer_cfg: DictConfig, output_dir: Path, logger) -> dict:
    """Train an autoencoder system, measure its latent scale, save last.ckpt and the safetensors export."""
    config_dict = to_container(cfg)
    system: AutoencoderSystem = instantiate(model_cfg, **system_options(cfg, latent=False))
    datamodule = instantiate(cfg.data)
    trainer = build_trainer(cfg, trainer_cfg=trainer_cfg, output_dir=output_dir, config_dict=config_dict, logger=logger)
    ckpt_dir = output_dir / "checkpoints"
    start = time.time()
    if system.autoencoder.is_trainable:
        fit(trainer, system, datamodule, resolve_resume_path(cfg, ckpt_dir))
    else:
        log.info("autoencoder=%s has nothing to train (identity first stage); exporting it as is", cfg.autoencoder.get("_target_"))
        datamodule.setup("fit")
    # The latent scale is measured on training batches, all-reduced across ranks, stored in a buffer.
    datamodule.setup("fit")
    scale, shift = measure_latent_stats(
        system.autoencoder,
        (b["image"].to(system.device) for b in datamodule.train_dataloader()),
        num_batches=system.latent_stats_batches,
        rescale=system.autoencoder.regularizer.nll_reduction == "sum" or system.rescale_vq_latents,
    )
    system.autoencoder.set_latent_stats(scale, shift)
    log.info("latent scale %.5f shift %.5f", float(scale), float(shift))
    if system.autoencoder.is_trainable:
        metrics = scalar_metrics(trainer.validate(system, datamodule=datamodule, verbose=False)[0])
        trainer.save_checkpoint(ckpt_dir / "last.ckpt", weights_only=False)  # full state: resumable
    else:
        metrics = {}
    if trainer.is_global_zero:
        export_first_stage(system.autoencoder, to_container(cfg.autoencoder), ckpt_dir / "autoencoder.safetensors")
    # Other DDP ranks load this export next (second stage): wait until rank 0 has written it.
    trainer.strategy.barrier("first-stage export")
    metrics.update(
        {
            "latent_scale": float(scale),
            "latent_shift": float(shift),
            "train_wall_time_s": time.time() - start,
            "global_step": trainer.global_step,
        }
    )
    write_json(output_dir / "metrics.json", {"kind": "autoencoder", "metrics": metrics, "config": config_dict})
    return metrics


def resolve_resume_path(cfg: DictConfig, ckpt_dir: Path) -> str | None:
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


def check_before_training(cfg: DictConfig) -> None:
    """Cheap checks of a latent-model config that would otherwise fail only after the first stage trained."""
    conditioner = instantiate(cfg.conditioner)
    scale = float(cfg.guidance.scale)
    if scale != 1.0 and not conditioner.is_conditional:
        raise ConfigError(
            f"guidance.scale={scale} needs a conditional model, but this one is unconditional "
            "(conditioner=none). Use guidance.scale=1.0, or train with conditioner=class."
        )


def ensure_first_stage(cfg: DictConfig) -> str | None:
    """Return a first-stage checkpoint for this run: the configured one, or train/reuse one."""
    if cfg.first_stage.ckpt:
        return str(cfg.first_stage.ckpt)
    autoencoder = instantiate(cfg.autoencoder)
    if not autoencoder.is_trainable:
        return None
    ae_cfg = cfg.first_stage.model
    trainer_cfg = OmegaConf.merge(cfg.trainer, cfg.first_stage.get("trainer") or {})
    # `first_stage.data` (optional): data settings that differ for the first stage, e.g. its batch size.
    data_cfg = OmegaConf.merge(OmegaConf.create(to_container(cfg.data)), cfg.first_stage.get("data") or {})
    key = config_hash(cfg.autoencoder, ae_cfg, data_cfg, trainer_cfg.max_steps, cfg.seed)
    name = f"{hydra_choice('autoencoder', 'autoencoder')}-{key}"
    out_dir = Path(cfg.paths.first_stage_cache) / name
    export = out_dir / "checkpoints" / "autoencoder.safetensors"
    if export.is_file() and (out_dir / "metrics.json").is_file():
        log.info("reusing the finished first stage %s", out_dir)
        return str(export)
    log.info("training the first stage into %s", out_dir)
    check_output_dir(out_dir)
    logger = build_logger(cfg.get("logger"), save_dir=str(out_dir)) if cfg.get("logger") else False
    # The autoencoder run's own config (what its checkpoint records): this run's, with the
    # first-stage system as `model` and the first-stage trainer settings.
    ae_run_cfg = cfg.copy()
    with open_dict(ae_run_cfg):
        ae_run_cfg.model = ae_cfg
        ae_run_cfg.trainer = trainer_cfg
        ae_run_cfg.data = data_cfg
        ae_run_cfg.paths.output_dir = str(out_dir)
    _fit_autoencoder(ae_run_cfg, ae_run_cfg.model, ae_run_cfg.trainer, out_dir, logger)
    if logger and hasattr(logger, "experiment") and hasattr(logger.experiment, "finish"):
        logger.experiment.finish()
    return str(export)


def attach_latent_cache(cfg: DictConfig, system, datamodule) -> Path:
    """Encode the training split once (or load the matching cache) and train from it."""
    from latentgen.data.latent_cache import CachedLatentDataset, load_or_build_latent_cache

    datamodule.setup("fit")
    base = datamodule.dataset("train")
    data_cfg = to_container(cfg.data)
    data_cfg.pop("batch_size", None), data_cfg.pop("val_batch_size", None), data_cfg.pop("num_workers", None)
    cache, path = load_or_build_latent_cache(system.first_stage, base, cfg.paths.cache_dir, data_cfg)
    datamodule.use_train_dataset(CachedLatentDataset(cache, base, seed=datamodule.seed))
    return path


def train(cfg: DictConfig) -> dict[str, float]:
    """Train the configured system; returns the final validation metrics (also in metrics.json).

    With a ``sweep`` node (experiment=f_sweep) the run is a sweep job (latentgen.sweep.job): a finished
    job with the same config is skipped, a failure is recorded (error.txt) instead of stopping the sweep.
    """
    silence_expected_warnings()
    if cfg.get("sweep") is not None:
        from latentgen.sweep.job import run_sweep_job

        return run_sweep_job(cfg, _train)
    return _train(cfg)


def _train(cfg: DictConfig) -> dict[str, float]:
    L.seed_everything(cfg.seed, workers=True)
    output_dir = check_output_dir(cfg.paths.output_dir)
    if is_autoencoder_run(cfg.model):
        logger = build_logger(cfg.get("logger"))
        return _fit_autoencoder(cfg, cfg.model, cfg.trainer, output_dir, logger)

    check_before_training(cfg)
    first_stage_ckpt = ensure_first_stage(cfg)
    L.seed_everything(cfg.seed, workers=True)
    with open_dict(cfg):
        cfg.first_stage.ckpt = first_stage_ckpt  # recorded in the checkpoint's config
    config_dict = to_container(cfg)
    system = build_latent_system(cfg, first_stage_ckpt)
    datamodule = instantiate(cfg.data)
    if datamodule.cache_latents:
        attach_latent_cache(cfg, system, datamodule)
    logger = build_logger(cfg.get("logger"))
    trainer = build_trainer(cfg, trainer_cfg=cfg.trainer, output_dir=output_dir, config_dict=config_dict, logger=logger)
    start = time.time()
    fit(trainer, system, datamodule, resolve_resume_path(cfg, output_dir / "checkpoints"))
    wall = time.time() - start
    metrics = scalar_metrics(trainer.validate(system, datamodule=datamodule, verbose=False)[0])
    metrics.update({"train_wall_time_s": wall, "global_step": trainer.global_step})
    trainer.save_checkpoint(output_dir / "checkpoints" / "last.ckpt", weights_only=False)  # full state: resumable
    write_json(output_dir / "metrics.json", {"kind": system.kind, "metrics": metrics, "config": config_dict})
    return metrics


# ---------------------------------------------------------------------------------------------- evaluation
def load_system_from_checkpoint(path: str, overrides: dict[str, Any] | None = None):
    """Rebuild a system from a checkpoint's own config and load its weights (weights_only=True).

    ``overrides`` maps dotted keys to values that *replace* those nodes of the stored config, e.g.
    ``{"model.sampler": {...}, "model.guidance_scale": 2.0}``.
    """
    ckpt = read_latentgen_checkpoint(path)
    stored = OmegaConf.create(ckpt[CONFIG_KEY])
    for key, value in (overrides or {}).items():
        OmegaConf.update(stored, key, value, merge=False, force_add=True)
    check_targets(stored, "checkpoint config")
    if is_autoencoder_run(stored.model):
        system = instantiate(stored.model, **system_options(stored, latent=False))
    else:
        system = build_latent_system(stored, None, check_config=False)
    missing, unexpected = system.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        from latentgen.errors import CheckpointError

        raise CheckpointError(f"'{path}' does not fit the system its config describes: missing {missing[:8]}, unexpected {unexpected[:8]}")
    return system.eval(), stored


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate a checkpoint: reconstructions for an autoencoder, samples for a latent model."""
    from latentgen.evaluation import run_evaluation

    return run_evaluation(cfg)
