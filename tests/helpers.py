"""Helpers shared by tests: composing the real configs, small trainer settings."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from latentgen.config import register_resolvers

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# Overrides that make any training config tiny and quiet enough for a unit of a test suite.
FAST = [
    "logger=none",
    "trainer.enable_progress_bar=false",
    "~callbacks.progress_bar",
    "trainer.log_every_n_steps=1",
]

# Tiny data, autoencoder and latent-model settings for in-process training tests.
TINY_DATA = ["data.batch_size=8", "data.resolution=16", "trainer.limit_val_batches=1", "num_grid_samples=4"]
TINY_AE = ["autoencoder=kl_f4_tiny", "discriminator=patchgan_tiny", "perceptual=none"]
TINY_LDM = ["denoiser=unet_tiny", "sampler.steps=4", "first_stage.trainer.max_steps=6", "first_stage.trainer.val_check_interval=6"]


def compose_config(overrides: list[str] | None = None, config_name: str = "config", output_dir: str | None = None) -> DictConfig:
    """Compose a config from conf/ as Hydra would, with ``paths.output_dir`` set (no Hydra run dir here)."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides or []))
    with open_dict(cfg):
        out = output_dir or "/tmp/latentgen-test-output"
        cfg.paths.output_dir = out
        cfg.paths.first_stage_cache = str(Path(out) / "first_stage_cache")
        cfg.paths.cache_dir = str(Path(out) / "cache")
    return cfg


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def resolved(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)
