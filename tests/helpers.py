"""Helpers shared by tests: composing the real configs, small trainer settings, running the real command
line in a subprocess, a first-stage export made in a fraction of a second, multi-process plumbing and a
tiny feature extractor. Test modules import from here, never from each other."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from latentgen.autoencoders.frozen import export_first_stage
from latentgen.config import instantiate, register_resolvers, to_container
from latentgen.metrics import FeatureExtractor

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
TINY_LDM = [
    "denoiser=unet_tiny",
    "sampler.steps=4",
    "first_stage.trainer.max_steps=6",
    "first_stage.trainer.val_check_interval=6",
]

# Tiny settings for runs of train.py / evaluate.py through the command line.
CLI_TINY = [
    "data.batch_size=8",
    "data.resolution=16",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "~callbacks.progress_bar",
    "num_grid_samples=4",
    "perceptual=none",
    "discriminator=patchgan_tiny",
]


# ---------------------------------------------------------------------------------------------- configs
def compose_config(
    overrides: list[str] | None = None, config_name: str = "config", output_dir: str | None = None
) -> DictConfig:
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


# ---------------------------------------------------------------------------------------------- command line
# Variables that make Lightning believe it runs inside an already launched job (a SLURM allocation,
# or a parent that set up DDP): a CLI run under test must launch its own processes.
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GROUP_RANK", "RANK")


def cli_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment for a ``train.py`` subprocess: offline W&B, one thread, no inherited launch state."""
    env = {
        k: v for k, v in os.environ.items() if k not in _LAUNCH_ENV and not k.startswith(("SLURM_", "PMI_", "OMPI_"))
    }
    env.update(WANDB_MODE="offline", OMP_NUM_THREADS="1", LATENTGEN_ROOT=str(tmp), HF_HUB_OFFLINE="1", **extra)
    return env


def run_cli(args: list[str], tmp: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """``python <args>`` from the repository root in :func:`cli_env`; prints the output's tail on failure."""
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=cli_env(tmp), capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        print(proc.stdout[-4000:])
        print(proc.stderr[-8000:])
    return proc


# ---------------------------------------------------------------------------------------------- training
def make_first_stage_export(out_dir: Path, overrides: list[str], scale: float = 0.8) -> Path:
    """An untrained autoencoder of the requested config with a latent scale, exported exactly as a
    trained one is (safetensors + config JSON): ``first_stage.ckpt=<path>`` then skips first-stage training."""
    cfg = compose_config(overrides, output_dir=str(out_dir))
    torch.manual_seed(0)
    autoencoder = instantiate(cfg.autoencoder)
    autoencoder.set_latent_stats(scale, 0.0)
    return export_first_stage(autoencoder, to_container(cfg.autoencoder), Path(out_dir) / "autoencoder.safetensors")


# A tiny SD-like diffusers AutoencoderKL (f=2, 4 latent channels, mid-block attention), 16 px friendly.
TINY_DIFFUSERS_VAE = {
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "scaling_factor": 0.18215,
}


def make_diffusers_vae(out_dir: Path, seed: int = 0, **config) -> Path:
    """A random-weight diffusers ``AutoencoderKL`` made by diffusers itself and written with ``save_pretrained``
    to ``out_dir`` (its weights perturbed away from diffusers' init, so zero biases or unit norms prove nothing).
    ``config`` overrides :data:`TINY_DIFFUSERS_VAE`."""
    from diffusers import AutoencoderKL

    config = {**TINY_DIFFUSERS_VAE, **config}
    n = len(config["block_out_channels"])  # one block type per level unless the caller gives them
    config.setdefault("down_block_types", ["DownEncoderBlock2D"] * n)
    config.setdefault("up_block_types", ["UpDecoderBlock2D"] * n)
    torch.manual_seed(seed)
    vae = AutoencoderKL(**config)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    vae.save_pretrained(out_dir, safe_serialization=True)
    return Path(out_dir)


class Throttle(L.Callback):
    """Sleep after every training batch, so that a signal can land mid-training (used through the CLI)."""

    def __init__(self, seconds: float = 0.25) -> None:
        self.seconds = float(seconds)

    def on_train_batch_end(self, *args, **kwargs) -> None:
        time.sleep(self.seconds)


# ---------------------------------------------------------------------------------------------- processes
def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a gloo process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------- metrics
def random_images(n: int, seed: int, bright: float = 0.0) -> torch.Tensor:
    """``n`` random 3x16x16 images as floats in [-1, 1], shifted by ``bright``."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 16, 16, generator=g) * 1.6 - 0.8 + bright).clamp(-1, 1)  # (n, 3, 16, 16)


class TinyExtractor(FeatureExtractor):
    """A fixed random projection of 8x8-pooled pixels: 64-d features, 10 logits. Counts its calls."""

    feature_dim = 64
    has_logits = True
    weights_label = "random projection (test)"

    def __init__(self, seed: int = 0, name: str = "tiny-test") -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = nn.Parameter(torch.randn(3 * 8 * 8, 64, generator=g) / 8, requires_grad=False)
        self.head = nn.Parameter(torch.randn(64, 10, generator=g), requires_grad=False)
        self.name = name
        self.calls = 0

    def forward(self, images):
        self._check_input(images)
        self.calls += 1
        x = F.adaptive_avg_pool2d(images.float() / 255, 8).flatten(1)  # (B, 192)
        f = x @ self.proj  # (B, 64)
        return {"features": f, "logits": f @ self.head}


def random_inception_weights(path: Path) -> Path:
    """A weights file in the layout of torch-fidelity's FID InceptionV3 with random values (the real file is
    never downloaded in tests): loadable by ``extractor=inception extractor.weights_path=...`` and by
    torch-fidelity's ``--feature-extractor-weights-path``."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    with (
        mock.patch.object(tfi, "load_state_dict_from_url", return_value={}),
        mock.patch.object(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None),
    ):
        torch.manual_seed(0)
        state = tfi.FeatureExtractorInceptionV3("random", ["2048"]).state_dict()
    g = torch.Generator().manual_seed(1)
    for k, v in state.items():  # random BN running stats, so that the file differs from a fresh init
        if k.endswith("running_mean"):
            v.copy_(torch.randn(v.shape, generator=g) * 0.1)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def resume_run(steps: int) -> list[str]:
    """A tiny latent-model run of ``steps`` batches that checkpoints every 3 steps and logs every batch's loss
    (``train_steps.jsonl``): the resume, DDP and SLURM requeue tests compare such runs."""
    return [
        "data=shapes",
        "data.dataset.num_train=36",
        "data.dataset.num_val=8",
        "data.batch_size=8",
        "data.resolution=16",
        "autoencoder=kl_f4_tiny",
        "denoiser=unet_tiny",
        "sampler.steps=2",
        "model.lr_schedule.warmup_steps=2",
        f"trainer.max_steps={steps}",
        "trainer.val_check_interval=4",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "~callbacks.progress_bar",
        "num_grid_samples=4",
        "sample_every_n_steps=1000",
        "callbacks.model_checkpoint.every_n_train_steps=3",
        "+callbacks.step_log._target_=latentgen.callbacks.step_log.StepMetricsLog",
    ]


# The f sweep at tiny sizes: 16 px digits, 4 training steps, evaluations at steps 2 and 4 on 16 samples, a
# 1-epoch dataset classifier (trained on first use into the test's own cache).
TINY_SWEEP = [
    "data.resolution=16",
    "trainer.max_steps=4",
    "trainer.val_check_interval=4",
    "trainer.limit_val_batches=1",
    "first_stage.trainer.max_steps=2",
    "first_stage.trainer.val_check_interval=2",
    "first_stage.latent_stats_batches=2",
    "callbacks.generative_eval.milestones=[2,4]",
    "callbacks.generative_eval.num_samples=16",
    "callbacks.generative_eval.batch_size=16",
    "callbacks.generative_eval.sampling_steps=2",
    "callbacks.generative_eval.final_sampling_steps=[2,3]",
    "+callbacks.generative_eval.extractor.epochs=1",
    "callbacks.generative_eval.lpips=null",
    "trainer.enable_progress_bar=false",
    "~callbacks.progress_bar",
    "num_grid_samples=4",
]


# ---------------------------------------------------------------------------------------------- first-stage parts
def identity_autoencoder():
    """An identity first stage on 2-channel images (f = 1): its latents are the images."""
    from latentgen.autoencoders import Autoencoder, IdentityDecoder, IdentityEncoder, IdentityRegularizer

    return Autoencoder(IdentityEncoder(2), IdentityRegularizer(), IdentityDecoder(2), 1, 2, quant_conv=False)


def image_batches(seed: int, n: int = 3, loc: float = 3.0, std: float = 2.0) -> list[dict]:
    """``n`` batches of four (2, 8, 8) images drawn from N(loc, std^2)."""
    g = torch.Generator().manual_seed(seed)
    return [{"image": loc + std * torch.randn(4, 2, 8, 8, generator=g)} for _ in range(n)]


def vq_with_codebook(codes: torch.Tensor, **kw):
    """A VectorQuantizer whose codebook (and EMA sums) start at ``codes`` (K, D)."""
    from latentgen.autoencoders.regularizers import VectorQuantizer

    vq = VectorQuantizer(num_codes=codes.shape[0], code_dim=codes.shape[1], **kw)
    with torch.no_grad():
        vq.codebook.copy_(codes)
        if vq.ema:
            vq.ema_embed_sum.copy_(codes)
    return vq


def resume_reference(tmp: Path, steps: int) -> tuple[list[str], Path]:
    """The overrides of a :func:`resume_run` on a freshly exported tiny first stage, and the dir of its
    uninterrupted one-process run (the reference the resume, DDP and requeue tests compare with)."""
    from latentgen.app.training import train

    export = make_first_stage_export(
        tmp / "first_stage", ["data=shapes", "data.resolution=16", "autoencoder=kl_f4_tiny"]
    )
    overrides = [*resume_run(steps), f"first_stage.ckpt={export}"]
    ref = tmp / "reference"
    train(compose_config([*overrides, "logger=none"], output_dir=str(ref)))
    return overrides, ref
