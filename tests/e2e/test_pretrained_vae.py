"""A pretrained diffusers VAE as the first stage, through the real command line (README, "Use a Stable Diffusion
VAE"): train.py trains a latent model from the latent cache of a tiny random-weight AutoencoderKL folder, with no
first-stage training, and evaluate.py measures that latent model."""

from __future__ import annotations

import json

import pytest

from tests.helpers import CLI_TINY, make_diffusers_vae, run_cli

pytest.importorskip("diffusers")


@pytest.mark.slow
def test_train_and_evaluate_a_latent_model_on_a_diffusers_vae(tmp_path):
    vae_dir = make_diffusers_vae(tmp_path / "sd-vae-tiny")  # f=2, 4 latent channels, scaling_factor 0.18215
    run_dir = tmp_path / "run"
    train = run_cli(
        [
            "train.py",
            "autoencoder=diffusers",
            f"first_stage.path={vae_dir}",
            "data=shapes",
            "data.cache_latents=true",
            "denoiser=unet_tiny",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
            "sampler.steps=2",
            *CLI_TINY,
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
    )
    assert train.returncode == 0
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["metrics"]["global_step"] == 3
    assert record["latent"] == {
        "downsample_factor": 2,
        "latent_channels": 4,
        "latent_shape": [4, 8, 8],
        "latent_scale": pytest.approx(0.18215),
        "latent_shift": 0.0,
        "pretrained": "sd-vae-tiny",
    }
    cache = tmp_path / ".cache" / "latentgen"
    assert not (cache / "first_stage").exists()  # nothing was trained in stage 1
    assert any(p.is_file() for p in cache.rglob("*")), "the latent cache was not written"
    assert (run_dir / "images" / "final.png").is_file()

    eval_dir = tmp_path / "eval"
    evaluate = run_cli(
        [
            "evaluate.py",
            f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}",
            "num_samples=8",
            "batch_size=8",
            "logger=none",
            f"hydra.run.dir={eval_dir}",
        ],
        tmp_path,
    )
    assert evaluate.returncode == 0
    saved = json.loads((eval_dir / "metrics.json").read_text())
    assert saved["latent"] == record["latent"] and saved["kind"] == "latent_generative"
    assert (eval_dir / "samples.png").is_file()
