"""In-process training runs of a few steps through latentgen.app.training (the same path as train.py)."""

from __future__ import annotations

import json

import pytest
import torch

from latentgen.checkpoint import read_latentgen_checkpoint
from latentgen.errors import CheckpointError, ConfigError
from latentgen.app.building import load_system_from_checkpoint
from latentgen.app.training import train
from tests.helpers import FAST, TINY_AE, TINY_DATA, TINY_LDM, compose_config


def test_autoencoder_run_writes_checkpoint_export_grid_and_metrics(tmp_path):
    cfg = compose_config(
        [*FAST, *TINY_DATA, *TINY_AE, "model=autoencoder", "data=shapes", "trainer.max_steps=4", "trainer.val_check_interval=2",
         "ae_loss.disc_start=2", "ae_loss.disc_train_start=1", "sample_every_n_steps=2"],
        output_dir=str(tmp_path),
    )
    metrics = train(cfg)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "checkpoints" / "autoencoder.safetensors").is_file()
    assert (tmp_path / "images" / "final.png").is_file()
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["kind"] == "autoencoder"
    assert saved["metrics"]["global_step"] == 4  # global_step counts batches, not optimizer steps
    assert 0 < metrics["latent_scale"] < 1e3 and metrics["val/psnr"] > 0
    ckpt = read_latentgen_checkpoint(tmp_path / "checkpoints" / "last.ckpt", expected_kind="autoencoder")
    assert float(ckpt["state_dict"]["autoencoder.latent_scale"]) == pytest.approx(metrics["latent_scale"])


def test_two_stage_run_trains_first_stage_then_latent_model(trained_ldm):
    cfg, out, metrics, _ = trained_ldm
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "images" / "final.png").is_file()
    assert metrics["global_step"] == 6
    assert "val/loss_ema" in metrics
    ckpt = read_latentgen_checkpoint(out / "checkpoints" / "last.ckpt", expected_kind="latent_generative")
    assert ckpt["latentgen_config"]["first_stage"]["ckpt"].endswith("autoencoder.safetensors")


def test_rerun_reuses_the_finished_first_stage(trained_ldm, monkeypatch):
    cfg, out, _, overrides = trained_ldm
    import latentgen.app.training as training

    def must_not_train(*args, **kwargs):
        raise AssertionError("the first stage was trained again")

    monkeypatch.setattr(training, "train_first_stage", must_not_train)
    fresh = compose_config(overrides, output_dir=str(out))
    assert fresh.first_stage.ckpt is None
    assert training.first_stage_for(fresh) == cfg.first_stage.ckpt


def test_checkpoint_round_trip_gives_identical_samples(trained_ldm):
    _, out, _, _ = trained_ldm
    system, stored = load_system_from_checkpoint(str(out / "checkpoints" / "last.ckpt"))
    system2, _ = load_system_from_checkpoint(str(out / "checkpoints" / "last.ckpt"))
    batch = {"label": torch.arange(4) % 10}
    a = system.sample(batch, generator=torch.Generator().manual_seed(0))
    b = system2.sample(batch, generator=torch.Generator().manual_seed(0))
    assert a.shape == (4, 1, 16, 16)
    assert torch.equal(a, b)
    # The EMA copy was restored exactly (it differs from the live weights after training).
    ckpt = read_latentgen_checkpoint(out / "checkpoints" / "last.ckpt")
    for k, v in system.state_dict().items():
        if k.startswith("ema."):
            assert torch.equal(v, ckpt["state_dict"][k]), k


def test_guidance_on_unconditional_model_is_a_clear_error(tmp_path):
    cfg = compose_config([*FAST, *TINY_DATA, *TINY_AE, *TINY_LDM, "conditioner=none", "guidance.scale=3.0", "trainer.max_steps=1"],
                         output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="guidance.scale=3.0"):
        train(cfg)


def test_first_stage_checkpoint_of_another_autoencoder_is_refused(trained_ldm, tmp_path):
    cfg, _, _, _ = trained_ldm
    ae_ckpt = cfg.first_stage.ckpt
    bad = compose_config([*FAST, *TINY_DATA, *TINY_LDM, "autoencoder=kl_f8_tiny", f"first_stage.ckpt={ae_ckpt}", "trainer.max_steps=1"],
                         output_dir=str(tmp_path))
    with pytest.raises(CheckpointError, match="downsample_factor"):
        train(bad)


def test_training_from_the_latent_cache(trained_ldm, tmp_path):
    cfg, _, _, _ = trained_ldm
    run_cfg = compose_config([*FAST, *TINY_DATA, *TINY_AE, *TINY_LDM, "data=digits", "data.cache_latents=true",
                              f"first_stage.ckpt={cfg.first_stage.ckpt}", "trainer.max_steps=2", "trainer.val_check_interval=2"],
                             output_dir=str(tmp_path))
    metrics = train(run_cfg)
    assert metrics["global_step"] == 2
    assert list((tmp_path / "cache" / "latents").glob("train-*.pt")), "no latent cache was written"
