"""``autoencoder=diffusers``: a latent model trained in-process on a pretrained diffusers VAE folder, from its
latent cache, with no first-stage stage; the checkpoint rebuilds (allow-listed factory) and samples."""

from __future__ import annotations

import json

import pytest
import torch

from latentgen.app.building import load_system_from_checkpoint
from latentgen.app.training import train
from tests.helpers import FAST, TINY_DATA, compose_config, make_diffusers_vae

pytest.importorskip("diffusers")


def test_latent_model_trains_on_a_pretrained_vae_without_training_it(tmp_path, monkeypatch):
    import latentgen.app.training as training

    def must_not_train(*args, **kwargs):
        raise AssertionError("a pretrained first stage must not be trained")

    monkeypatch.setattr(training, "train_first_stage", must_not_train)
    vae_dir = make_diffusers_vae(tmp_path / "pipeline" / "vae", latent_channels=8, shift_factor=0.25)
    overrides = [
        *FAST,
        *TINY_DATA,
        "data=shapes",
        "data.cache_latents=true",
        "autoencoder=diffusers",
        f"first_stage.path={tmp_path / 'pipeline'}",
        "denoiser=unet_tiny",
        "sampler.steps=2",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
    ]
    cfg = compose_config(overrides, output_dir=str(tmp_path / "run"))
    assert cfg.autoencoder.latent_channels == 8 and cfg.denoiser.in_channels == 8  # from vae/config.json
    train(cfg)
    latent = json.loads((tmp_path / "run" / "metrics.json").read_text())["latent"]
    assert latent["pretrained"] == "pipeline/vae" and latent["latent_shift"] == pytest.approx(0.25)
    assert list((tmp_path / "run" / "cache").rglob("*.pt")), "no latent cache"
    assert not (tmp_path / "run" / "first_stage_cache").exists()

    system, stored = load_system_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert stored.autoencoder.path == str(tmp_path / "pipeline") and not system.first_stage.is_trainable
    assert str(vae_dir).startswith(stored.autoencoder.path)
    noise = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        images = system.first_stage.decode_scaled(noise)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()


def test_diffusers_autoencoder_without_a_path_says_what_to_give(tmp_path):
    cfg = compose_config(["autoencoder=diffusers", "data=shapes"], output_dir=str(tmp_path))
    with pytest.raises(Exception, match="first_stage.path") as info:
        _ = cfg.autoencoder.latent_channels
    assert "sd-vae-ft-ema" in str(info.value)
    cfg = compose_config(
        ["autoencoder=diffusers", f"first_stage.path={tmp_path / 'missing'}"], output_dir=str(tmp_path)
    )
    with pytest.raises(Exception, match="missing' does not exist.*config.json and diffusion_pytorch_model.safetensors"):
        train(cfg)  # raised while the run config is resolved, before anything is built


def test_autoencoder_run_on_a_pretrained_vae_measures_it_without_training_it(tmp_path):
    """``model=autoencoder autoencoder=diffusers``: no training and no re-measured latent scale (config.json's
    stays); the validation reconstruction metrics, ``last.ckpt`` (which evaluate.py measures) and the export."""
    from latentgen.app.evaluation import evaluate as run_evaluation

    vae_dir = make_diffusers_vae(tmp_path / "sd-vae-tiny", scaling_factor=0.13025)
    overrides = [*FAST, *TINY_DATA, "data=shapes", "model=autoencoder", "autoencoder=diffusers"]
    cfg = compose_config([*overrides, f"first_stage.path={vae_dir}"], output_dir=str(tmp_path / "run"))
    metrics = train(cfg)
    assert metrics["global_step"] == 0 and metrics["val/psnr"] > -100
    assert metrics["latent_scale"] == pytest.approx(0.13025) and metrics["latent_shift"] == 0.0
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and (tmp_path / "run" / "checkpoints" / "autoencoder.safetensors").is_file()
    eval_cfg = compose_config(
        [f"ckpt={ckpt}", "logger=none", "num_samples=8", "batch_size=8"],
        config_name="evaluate",
        output_dir=str(tmp_path / "eval"),
    )
    record = run_evaluation(eval_cfg)
    assert record["latent"]["pretrained"] == "sd-vae-tiny" and "psnr_mean" in record["metrics"]
