"""`python -m latentgen.export`: a latent model trained a few steps through the CLI on a random-weight diffusers VAE
opens in diffusers and samples the same latents and images from the same noise (DDPM, DDIM, flow Euler)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from latentgen.app.building import load_system_from_checkpoint
from latentgen.generative.samplers import DDIMSampler, DDPMSampler, EulerSampler
from latentgen.generative.time_grids import LinspaceSpacing
from tests.helpers import CLI_TINY, make_diffusers_vae, run_cli

diffusers = pytest.importorskip("diffusers")

STEPS = 10  # divides T = 1000 (diffusers' DDIM steps by T // N)


def train_and_export(tmp_path: Path, *overrides: str, scheduler: str | None = None) -> tuple[Path, Path]:
    """The README's commands: train on the diffusers VAE with the latent cache, then export. (ckpt, folder)."""
    vae = make_diffusers_vae(tmp_path / "sd-vae")
    run_dir, out = tmp_path / "run", tmp_path / "exported"
    train = ["train.py", "autoencoder=diffusers", f"first_stage.path={vae}", "data=shapes", "data.cache_latents=true",
             "denoiser=unet_plain", "logger=none", "trainer.max_steps=3", "trainer.val_check_interval=3",
             "model.ema_decay=0.5", *CLI_TINY, *overrides, f"paths.cache_dir={tmp_path / 'cache'}",
             f"hydra.run.dir={run_dir}"]  # fmt: skip
    assert run_cli(train, tmp_path).returncode == 0
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    for name in ("model.safetensors", "model_ema.safetensors", "model.json"):
        assert (run_dir / "checkpoints" / name).is_file(), name
    args = ["-m", "latentgen.export", f"ckpt={ckpt}", f"out={out}"] + ([f"scheduler={scheduler}"] if scheduler else [])
    assert run_cli(args, tmp_path).returncode == 0
    return ckpt, out


def pipeline(out: Path, scheduler_cls: str | None = None):
    pipe = diffusers.DiffusionPipeline.from_pretrained(
        out, custom_pipeline=str(out / "pipeline.py"), trust_remote_code=True
    )
    if scheduler_cls is not None:
        pipe.scheduler = getattr(diffusers, scheduler_cls).from_config(pipe.scheduler.config)
    return pipe


def assert_same_samples(system, pipe, sampler, batch_size: int = 3, **pipe_kw) -> None:
    """Latents and decoded images of latentgen's sampler and the diffusers pipeline from one seed, to 1e-4."""
    batch = {"label": torch.zeros(batch_size)}  # unconditional: only the batch size is read

    def ours(decode: bool) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return system.sample(batch, generator=g, sampler=sampler, return_latents=not decode)

    def theirs(output_type: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return pipe(batch_size=batch_size, generator=g, output_type=output_type, **pipe_kw).images

    z = ours(decode=False)
    torch.testing.assert_close(theirs("latent"), z, atol=1e-4 * max(1.0, float(z.abs().max())), rtol=0)
    torch.testing.assert_close(theirs("pt"), (ours(decode=True) + 1) / 2, atol=1e-4, rtol=0)


@pytest.mark.slow  # two CLI processes, ~20 s of CPU
def test_exported_diffusion_model_samples_as_latentgen_ddpm_and_ddim(tmp_path):
    ckpt, out = train_and_export(tmp_path, "objective=ddpm_v", scheduler="ddpm")
    index = json.loads((out / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["vae"] == ["diffusers", "AutoencoderKL"]
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    system, _ = load_system_from_checkpoint(ckpt)
    pipe = pipeline(out)
    assert type(pipe.scheduler).__name__ == "DDPMScheduler"
    assert_same_samples(system, pipe, DDPMSampler(steps=STEPS), num_inference_steps=STEPS)
    assert_same_samples(system, pipeline(out, "DDIMScheduler"), DDIMSampler(steps=STEPS), num_inference_steps=STEPS)


@pytest.mark.slow  # two CLI processes, ~20 s of CPU
def test_exported_flow_model_samples_as_latentgen_euler(tmp_path):
    ckpt, out = train_and_export(tmp_path, "objective=rectified_flow", "sampler=euler")
    system, _ = load_system_from_checkpoint(ckpt)
    pipe = pipeline(out)
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    # diffusers' default grid is linspace(1, 1/1000, N); latentgen's trailing grid 1 - i/N is passed as sigmas
    assert_same_samples(system, pipe, EulerSampler(steps=STEPS, spacing=LinspaceSpacing(t_min=1e-3)),
                        num_inference_steps=STEPS)  # fmt: skip
    trailing = [1.0 - i / STEPS for i in range(STEPS)]
    assert_same_samples(system, pipe, EulerSampler(steps=STEPS), sigmas=trailing)
