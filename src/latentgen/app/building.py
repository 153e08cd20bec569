"""What the training and the evaluation roots both build: trainers, loggers, systems, run dirs."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict

from latentgen.autoencoders.autoencoder import Autoencoder
from latentgen.autoencoders.frozen import load_first_stage
from latentgen.callbacks.checkpoint import ConfigInCheckpoint
from latentgen.checkpoint import CONFIG_KEY, AtomicCheckpointIO, read_latentgen_checkpoint
from latentgen.config import check_targets, instantiate, to_container
from latentgen.errors import CheckpointError, ConfigError
from latentgen.files import probe_writable
from latentgen.systems.autoencoder import AutoencoderSystem
from latentgen.systems.latent_generative import LatentGenerativeSystem

log = logging.getLogger("latentgen")

# The nodes of a run config that a system is built from; a stored config is checked on exactly these.
SYSTEM_NODES = ("model", "autoencoder", "data")


def silence_expected_warnings() -> None:
    """Hide Lightning warnings that describe intended behaviour here (and only those)."""
    # Frozen parts (first stage, perceptual network, EMA copy) are in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    # The autoencoder checkpoints after its optimizer step on purpose (manual optimization).
    warnings.filterwarnings("ignore", message=r"Using ModelCheckpoint with manual optimization")
    # Lightning 2.6 on torch 2.14 warns about torch's LeafSpec inside fit (docs/machines.md#lightning-leafspec-warning).
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")


def check_output_dir(path: str | os.PathLike) -> Path:
    """Fail at start-up (not after an hour of training) if the run dir cannot be written."""
    path = Path(path)
    try:
        probe_writable(path)
    except OSError as e:
        raise ConfigError(
            f"output dir '{path}' is not writable ({e.strerror}); set hydra.run.dir or paths.root_dir"
        ) from e
    return path


def is_autoencoder_run(model_cfg: DictConfig) -> bool:
    """Whether ``model=`` names the first-stage system (an autoencoder run) rather than a latent model."""
    return issubclass(get_class(model_cfg._target_), AutoencoderSystem)


def build_logger(logger_cfg: DictConfig | None) -> Any:
    """The configured Lightning logger, or False for ``logger=none``."""
    if logger_cfg is None or not logger_cfg.get("_target_"):
        return False
    return instantiate(logger_cfg)


# Sharded strategies have not run with latentgen's systems: refused rather than advertised.
_UNPROVEN_STRATEGIES = ("fsdp", "deepspeed", "modelparallel")


def check_strategy(trainer_cfg: DictConfig) -> None:
    """Refuse a sharded strategy: the EMA copy would be sharded like the live model and image grids sample on
    rank 0 outside any collective, so such a run would hang or average the wrong weights."""
    strategy = trainer_cfg.get("strategy")
    name = str(strategy.get("_target_", "")) if isinstance(strategy, DictConfig) else str(strategy or "")
    short = name.rsplit(".", 1)[-1].lower().replace("_", "")  # FSDPStrategy -> fsdpstrategy, deepspeed_stage_2 -> ...
    if short.startswith(_UNPROVEN_STRATEGIES):
        raise ConfigError(
            f"trainer.strategy={name!r} is not supported yet: latentgen's EMA copy would be sharded like the live "
            "model and the image grids sample on rank 0 outside any collective, so a sharded run would hang or "
            "average the wrong weights. Use trainer=ddp (or trainer=ddp_cpu / trainer=slurm)."
        )


def build_trainer(cfg: DictConfig, *, trainer_cfg: DictConfig, logger: Any) -> L.Trainer:
    """The Lightning Trainer with the configured callbacks (each from its own config node) and atomic checkpoints.

    ``callbacks.<name>: null`` removes a callback; a callback that needs a logger says so itself.
    """
    check_strategy(trainer_cfg)
    callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values() if node is not None]
    callbacks = [cb for cb in callbacks if cb is not None]
    callbacks.append(ConfigInCheckpoint(to_container(cfg)))
    return instantiate(trainer_cfg, callbacks=callbacks, logger=logger, plugins=[AtomicCheckpointIO()])


def system_options(cfg: DictConfig, *, latent: bool) -> dict[str, Any]:
    """Run-level options passed to the system's constructor (top-level keys of conf/config.yaml)."""
    opts: dict[str, Any] = {"nonfinite": str(cfg.get("nonfinite") or "raise")}
    if latent:
        opts.update(seed=int(cfg.get("seed") or 0), compile=bool(cfg.get("compile") or False))
    return opts


def build_first_stage(cfg: DictConfig, ckpt: str | None, *, check_config: bool = True) -> Autoencoder:
    """The frozen autoencoder of ``autoencoder=``, loaded from ``ckpt`` (its stored config must match)."""
    autoencoder = instantiate(cfg.autoencoder)
    expected = to_container(cfg.autoencoder) if check_config else None
    return load_first_stage(autoencoder, ckpt, expected_config=expected)


def build_latent_system(
    cfg: DictConfig, first_stage_ckpt: str | None, *, check_config: bool = True
) -> LatentGenerativeSystem:
    first_stage = build_first_stage(cfg, first_stage_ckpt, check_config=check_config)
    return instantiate(cfg.model, first_stage=first_stage, **system_options(cfg, latent=True))


def build_system(cfg: DictConfig, first_stage_ckpt: str | None = None, *, check_config: bool = True):
    """An autoencoder system or a latent system, whichever ``model=`` names."""
    if is_autoencoder_run(cfg.model):
        return instantiate(cfg.model, **system_options(cfg, latent=False))
    return build_latent_system(cfg, first_stage_ckpt, check_config=check_config)


def upgrade_stored_config(stored: DictConfig) -> None:
    """Bring the config of an autoencoder checkpoint written by an earlier latentgen to today's layout, in
    place: the discriminator moved from ``model.loss.discriminator`` to ``model.discriminator`` (the weights'
    keys are renamed by the system on load), and ``model.rescale_vq_latents``, read only at the end of
    training, became ``autoencoder.regularizer.rescale_latents``. A VQ autoencoder trained with the KL loss
    (possible before the loss followed the regularizer) is rebuilt with the VQ loss's ``learn_logvar=false``:
    ``logvar`` is a parameter either way and its value comes from the checkpoint."""
    model = stored.get("model")
    if not isinstance(model, DictConfig) or not is_autoencoder_run(model):
        return
    with open_dict(model):
        loss = model.get("loss")
        if isinstance(loss, DictConfig) and "discriminator" in loss:
            with open_dict(loss):
                model.discriminator = loss.pop("discriminator")
        model.pop("rescale_vq_latents", None)
        regularizer = OmegaConf.select(model, "autoencoder.regularizer._target_")
        wants = getattr(get_class(regularizer), "loss_learns_logvar", None) if regularizer else None
        if isinstance(loss, DictConfig) and wants is not None and "learn_logvar" in loss:
            loss.learn_logvar = wants


def load_system_from_checkpoint(path: str | os.PathLike, overrides: dict[str, Any] | None = None):
    """Rebuild a system from a checkpoint's own config and load its weights (``weights_only=True``).

    Every ``_target_`` of the nodes a system is built from is checked against the allow-list
    (:func:`latentgen.config.check_targets`) before anything is built. ``overrides`` maps dotted keys to
    values that *replace* those nodes of the stored config, e.g. ``{"model.sampler": {...}}``.
    Returns ``(system in eval mode, stored config)``.
    """
    ckpt = read_latentgen_checkpoint(path)
    stored = OmegaConf.create(ckpt[CONFIG_KEY])
    for key, value in (overrides or {}).items():
        OmegaConf.update(stored, key, value, merge=False, force_add=True)
    for node in SYSTEM_NODES:
        if node in stored:
            check_targets(stored[node], f"checkpoint '{path}': {node}")
    upgrade_stored_config(stored)  # after the check: it resolves the (now admitted) system class
    system = build_system(stored, None, check_config=False)
    missing, unexpected = system.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"'{path}' does not fit the system its config describes: missing {missing[:8]}, unexpected {unexpected[:8]}"
        )
    return system.eval(), stored


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The scalar entries of a Lightning metrics dict as floats."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            out[k] = float(v)
        elif isinstance(v, (int, float)):
            out[k] = float(v)
    return out


def latent_contract(autoencoder: Autoencoder, resolution: int) -> dict[str, Any]:
    """What the second stage sees of a first stage: f, latent channels and shape, scale and shift, and for a
    pretrained first stage (``autoencoder=diffusers``) its name under ``pretrained``."""
    contract: dict[str, Any] = {
        "downsample_factor": int(autoencoder.downsample_factor),
        "latent_channels": int(autoencoder.latent_channels),
        "latent_shape": list(autoencoder.latent_shape(resolution)),
        "latent_scale": float(autoencoder.latent_scale),
        "latent_shift": float(autoencoder.latent_shift),
    }
    if getattr(autoencoder, "pretrained", None):
        contract["pretrained"] = str(autoencoder.pretrained)
    return contract
