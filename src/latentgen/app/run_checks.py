"""Checks of a run config that would otherwise fail late: after the first stage trained (minutes), or deep
inside torch with a message that names neither the key nor the fix.

:func:`check_run_config` runs when the training root starts, before any training. Every failure is a
:class:`~latentgen.errors.ConfigError` naming the key, the value and what to set.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from latentgen.config import instantiate
from latentgen.errors import ConfigError


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _positive(v: Any) -> bool:
    return _is_number(v) and float(v) > 0


def _unit_interval(v: Any) -> bool:  # [0, 1]
    return _is_number(v) and 0.0 <= float(v) <= 1.0


def _betas(v: Any) -> bool:  # Adam's (beta1, beta2), each in [0, 1)
    return isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(b) and 0.0 <= float(b) < 1.0 for b in v)


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _non_negative(v: Any) -> bool:
    return _is_number(v) and float(v) >= 0


def _steps(v: Any) -> bool:  # Lightning: a positive count, or -1 for "no limit"
    return v is None or (isinstance(v, int) and (v > 0 or v == -1))


# (key relative to a system node, test, what a valid value is)
_LATENT_MODEL_KEYS: list[tuple[str, Callable[[Any], bool], str]] = [
    ("optimizer.lr", _positive, "a finite learning rate > 0, e.g. 2e-4"),
    ("optimizer.betas", _betas, "two numbers in [0, 1), e.g. [0.9, 0.999]"),
    ("optimizer.weight_decay", _non_negative, "a finite number >= 0"),
    ("ema_decay", _unit_interval, "a number in [0, 1], e.g. 0.9999"),
]
_AUTOENCODER_KEYS: list[tuple[str, Callable[[Any], bool], str]] = [
    ("learning_rate", _positive, "a finite learning rate > 0, e.g. 1e-3 (4.5e-6 with scale_lr=true)"),
    ("disc_learning_rate", _positive, "a finite learning rate > 0"),
    ("betas", _betas, "two numbers in [0, 1), e.g. [0.5, 0.9]"),
]
_RUN_KEYS: list[tuple[str, Callable[[Any], bool], str]] = [
    ("guidance.scale", _non_negative, "a finite number >= 0 (1 = no guidance)"),
    ("data.batch_size", _positive_int, "a positive integer (the global batch size)"),
    ("trainer.max_steps", _steps, "a positive integer, or -1 for no limit"),
]


def _check_keys(node: DictConfig, prefix: str, table) -> None:
    for key, valid, what in table:
        value = OmegaConf.select(node, key, default=None)
        if value is None:
            continue  # not set: the component's own default applies
        plain = OmegaConf.to_object(value) if OmegaConf.is_config(value) else value
        if not valid(plain):
            raise ConfigError(
                f"{prefix}{key}={value!r} is not valid: it must be {what}. Fix it on the command line or in the config."
            )


def check_run_config(cfg: DictConfig) -> None:
    """Numbers of the run (learning rates, betas, EMA decay, guidance scale, batch sizes, steps), for the
    system this run trains and for the first stage it will train first; then guidance against the conditioner."""
    _check_keys(cfg, "", _RUN_KEYS)
    val_batch = cfg.data.get("val_batch_size")
    if val_batch is not None and not _positive_int(val_batch):
        raise ConfigError(f"data.val_batch_size={val_batch!r} must be a positive integer or null (= data.batch_size)")
    # Latent models and few-step students take an optimizer factory and an EMA; autoencoders their own rates.
    _check_keys(cfg.model, "model.", _LATENT_MODEL_KEYS if "optimizer" in cfg.model else _AUTOENCODER_KEYS)
    if "first_stage" in cfg and "denoiser" in cfg.model:  # a latent model (and the first stage it may train)
        if not cfg.first_stage.get("ckpt") and cfg.first_stage.get("model") is not None:
            _check_keys(cfg.first_stage.model, "first_stage.model.", _AUTOENCODER_KEYS)
        check_guidance(cfg)


def check_guidance(cfg: DictConfig) -> None:
    """Classifier-free guidance needs a conditional model."""
    scale = float(cfg.guidance.scale)
    conditioner = instantiate(cfg.conditioner)  # always built here: the RNG draws of a run stay as they were
    if scale != 1.0 and not conditioner.is_conditional:
        raise ConfigError(
            f"guidance.scale={scale} needs a conditional model, but this one is unconditional "
            "(conditioner=none). Use guidance.scale=1.0, or train with conditioner=class."
        )
