"""Load a trained autoencoder as the frozen first stage of a latent model.

The requested architecture comes from the run config (``autoencoder=...``); the weights and the
latent scale come from a checkpoint or its safetensors export. The checkpoint's embedded
autoencoder config is compared with the requested one, and any difference is a clear error: a
first stage trained with another ``f`` or ``latent_channels`` must never be used silently.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from latentgen.autoencoders.autoencoder import Autoencoder
from latentgen.checkpoint import CONFIG_KEY, read_latentgen_checkpoint
from latentgen.errors import CheckpointError, ConfigError
from latentgen.files import atomic_write, atomic_write_json

# Keys that may differ between the training run of the autoencoder and its use downstream
# (the encoder is convolutional; `resolution` only places attention blocks by feature-map size; the VQ
# codebook-restart settings act during training only and do not change a trained autoencoder).
_IGNORED_KEYS = {"resolution", "dead_code_restart", "dead_code_threshold", "usage_decay"}
# Keys added to the autoencoder configs after checkpoints were written, with the value those checkpoints
# were trained with: a checkpoint without the key matches a request for that value.
_ADDED_KEYS: dict[str, Any] = {"rescale_latents": False}


def config_differences(expected: Any, found: Any, prefix: str = "autoencoder") -> list[str]:
    """List ``key: expected != found`` for every leaf that differs (ignoring ``_IGNORED_KEYS``)."""
    diffs: list[str] = []
    if isinstance(expected, dict) and isinstance(found, dict):
        for key in sorted(set(expected) | set(found)):
            if key in _IGNORED_KEYS:
                continue
            if key not in found:
                if key in _ADDED_KEYS and expected[key] == _ADDED_KEYS[key]:
                    continue
                diffs.append(f"{prefix}.{key}: requested {expected[key]!r}, missing in the checkpoint")
            elif key not in expected:
                diffs.append(f"{prefix}.{key}: not requested, checkpoint has {found[key]!r}")
            else:
                diffs += config_differences(expected[key], found[key], f"{prefix}.{key}")
    elif isinstance(expected, (list, tuple)) and isinstance(found, (list, tuple)):
        if list(expected) != list(found):
            diffs.append(f"{prefix}: requested {list(expected)!r}, checkpoint has {list(found)!r}")
    elif expected != found:
        diffs.append(f"{prefix}: requested {expected!r}, checkpoint has {found!r}")
    return diffs


def read_first_stage(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return (autoencoder state_dict, autoencoder config dict) from a .ckpt or a .safetensors export."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"first_stage.ckpt='{path}' does not exist. Give a checkpoint of a model=autoencoder run "
            "(checkpoints/last.ckpt) or its export (checkpoints/autoencoder.safetensors)."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        meta_path = path.with_suffix(".json")
        if not meta_path.is_file():
            raise CheckpointError(f"'{path}' has no config beside it: expected '{meta_path}' (written by the export)")
        state = load_file(str(path))
        meta = json.loads(meta_path.read_text())
        return state, meta["autoencoder"]
    ckpt = read_latentgen_checkpoint(path)
    # An autoencoder run holds the weights under `autoencoder.`, a latent model its frozen copy under `first_stage.`.
    for prefix in ("autoencoder.", "first_stage."):
        state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        if state:
            return state, ckpt[CONFIG_KEY]["autoencoder"]
    raise CheckpointError(
        f"'{path}' holds no autoencoder weights (no 'autoencoder.*' or 'first_stage.*' keys): give the checkpoint "
        "of a model=autoencoder run, of a latent model, or an autoencoder.safetensors export"
    )


def export_first_stage(autoencoder: Autoencoder, config: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the weights (incl. latent scale) as safetensors and the autoencoder config as JSON beside it."""
    from safetensors.torch import save

    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in autoencoder.state_dict().items()}
    atomic_write(path, lambda f: f.write(save(state)))  # safetensors bytes
    meta = {
        "autoencoder": config,
        "latent_scale": float(autoencoder.latent_scale),
        "latent_shift": float(autoencoder.latent_shift),
    }
    atomic_write_json(path.with_suffix(".json"), meta)
    return path


def load_first_stage(
    autoencoder: Autoencoder, ckpt: str | None, expected_config: dict[str, Any] | None = None
) -> Autoencoder:
    """Load weights + latent scale into ``autoencoder`` and freeze it.

    Args:
        autoencoder: built from the requested config (``autoencoder=...``).
        ckpt: a model=autoencoder checkpoint, a latent model checkpoint, or a safetensors export.
            ``None`` is allowed only for an autoencoder with nothing to train (f=1 identity), or when
            the caller loads the weights afterwards (evaluation of a latent-model checkpoint).
        expected_config: the requested autoencoder config as a plain dict; when given, the
            checkpoint's config must match it.
    """
    if ckpt is not None:
        state, found_config = read_first_stage(ckpt)
        if expected_config is not None:
            diffs = config_differences(expected_config, found_config)
            if diffs:
                raise CheckpointError(
                    f"first_stage.ckpt='{ckpt}' was trained with a different autoencoder than the one requested:\n  "
                    + "\n  ".join(diffs[:20])
                    + "\nSelect the matching autoencoder config (autoencoder=...) or give a checkpoint of this one."
                )
        missing, unexpected = autoencoder.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"first_stage.ckpt='{ckpt}' does not fit the requested autoencoder: missing keys {missing[:8]}, "
                f"unexpected keys {unexpected[:8]}"
            )
    elif autoencoder.is_trainable and expected_config is not None:
        raise ConfigError(
            "first_stage.ckpt is null but the autoencoder has weights to train; run train.py without "
            "first_stage.ckpt to train it first, or give first_stage.ckpt=/path/to/autoencoder.ckpt"
        )
    return autoencoder.eval().requires_grad_(False)
