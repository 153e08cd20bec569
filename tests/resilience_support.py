"""Support for the resilience tests: a first-stage export made in a fraction of a second, and a
callback that slows training down so that a signal can land mid-training (used through the CLI)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import lightning as L
import torch

from latentgen.autoencoders.frozen import export_first_stage
from latentgen.config import instantiate, to_container
from tests.helpers import compose_config


def make_first_stage_export(out_dir: Path, overrides: list[str], scale: float = 0.8) -> Path:
    """An untrained autoencoder of the requested config with a latent scale, exported exactly as a
    trained one is (safetensors + config JSON): ``first_stage.ckpt=<path>`` then skips first-stage training."""
    cfg = compose_config(overrides, output_dir=str(out_dir))
    torch.manual_seed(0)
    autoencoder = instantiate(cfg.autoencoder)
    autoencoder.set_latent_stats(scale, 0.0)
    return export_first_stage(autoencoder, to_container(cfg.autoencoder), Path(out_dir) / "autoencoder.safetensors")


class Throttle(L.Callback):
    """Sleep after every training batch."""

    def __init__(self, seconds: float = 0.25) -> None:
        self.seconds = float(seconds)

    def on_train_batch_end(self, *args, **kwargs) -> None:
        time.sleep(self.seconds)


# Variables that make Lightning believe it runs inside an already launched job (a SLURM allocation,
# or a parent that set up DDP): a CLI run under test must launch its own processes.
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GROUP_RANK", "RANK")


def cli_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment for a ``train.py`` subprocess: offline W&B, one thread, no inherited launch state."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_ENV and not k.startswith(("SLURM_", "PMI_", "OMPI_"))}
    env.update(WANDB_MODE="offline", OMP_NUM_THREADS="1", LATENTGEN_ROOT=str(tmp), HF_HUB_OFFLINE="1", **extra)
    return env
