"""The trained latent model's weights as safetensors, with its config as JSON beside them.

At the end of a latent-model run ``checkpoints/`` holds, next to Lightning's resumable ``last.ckpt``:

- ``model.safetensors``: the trained denoiser and conditioner (``denoiser.*``, ``conditioner.*``),
- ``model_ema.safetensors``: their EMA copy (the weights that ``evaluate.py`` and the sampler use by default),
- ``model.json``: the resolved ``model`` config (denoiser, objective, sampler, conditioner), enough to rebuild the
  modules with ``hydra.utils.instantiate`` and ``load_state_dict``.

The first stage has its own ``autoencoder.safetensors`` + ``autoencoder.json``; ``python -m latentgen.export`` turns
the whole model into a diffusers folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from latentgen.files import atomic_write, atomic_write_json

__all__ = ["export_latent_model_weights"]


def _save(module: nn.Module, path: Path) -> None:
    from safetensors.torch import save

    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    atomic_write(path, lambda f: f.write(save(state)))


def export_latent_model_weights(
    trainable: nn.Module, ema: nn.Module, model_config: dict[str, Any], out_dir: str | os.PathLike
) -> list[Path]:
    """Write ``model.safetensors``, ``model_ema.safetensors`` and ``model.json`` into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "model.safetensors", out / "model_ema.safetensors", out / "model.json"]
    _save(trainable, paths[0])
    _save(ema, paths[1])
    config = {k: v for k, v in model_config.items() if k in ("denoiser", "objective", "sampler", "conditioner")}
    atomic_write_json(paths[2], {"format": "latentgen-latent-model", "model": config})
    return paths
