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
        [
            *FAST,
            *TINY_DATA,
            *TINY_AE,
            "model=autoencoder",
            "data=shapes",
            "trainer.max_steps=4",
            "trainer.val_check_interval=2",
            "ae_loss.disc_start=2",
            "ae_loss.disc_train_start=1",
            "sample_every_n_steps=2",
        ],
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


def test_reloaded_checkpoint_equals_the_trained_system(trained_ldm, tmp_path, monkeypatch):
    """``last.ckpt`` read back holds what training left in memory: the same weights and buffers, the same EMA
    copy (which differs from the live weights), and the same samples from fixed noise, EMA and live."""
    cfg, _, _, _ = trained_ldm
    import latentgen.app.training as training

    trained_systems = []
    fit = training.fit

    def keep_the_system(trainer, system, datamodule, ckpt_path):
        trained_systems.append(system)
        fit(trainer, system, datamodule, ckpt_path)

    monkeypatch.setattr(training, "fit", keep_the_system)
    run_cfg = compose_config([*FAST, *TINY_DATA, *TINY_AE, *TINY_LDM, "data=digits", "conditioner=class",
                              "guidance.scale=2.0", f"first_stage.ckpt={cfg.first_stage.ckpt}", "trainer.max_steps=4",
                              "trainer.val_check_interval=4"], output_dir=str(tmp_path))  # fmt: skip
    train(run_cfg)
    (trained,) = trained_systems
    trained = trained.cpu().eval()
    reloaded, _ = load_system_from_checkpoint(str(tmp_path / "checkpoints" / "last.ckpt"))
    assert reloaded is not trained

    want, got = trained.state_dict(), reloaded.state_dict()
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    live, ema = trained.trainable.state_dict(), trained.ema.shadow.state_dict()
    assert any(not torch.equal(ema[k], live[k]) for k in live), "the EMA copy equals the live weights"
    assert int(reloaded.ema.num_updates) == int(trained.ema.num_updates) == 4

    batch = {"label": torch.arange(4) % 10}
    noise = torch.randn((4, *trained.latent_shape), generator=torch.Generator().manual_seed(1))  # (4, C, h, w)
    for use_ema in (True, False):
        a = trained.sample(batch, noise=noise, generator=torch.Generator().manual_seed(0), use_ema=use_ema)
        b = reloaded.sample(batch, noise=noise, generator=torch.Generator().manual_seed(0), use_ema=use_ema)
        assert a.shape == (4, 1, 16, 16)
        assert torch.equal(a, b), f"use_ema={use_ema}"
    ema_samples = trained.sample(batch, noise=noise, generator=torch.Generator().manual_seed(0))
    live_samples = trained.sample(batch, noise=noise, generator=torch.Generator().manual_seed(0), use_ema=False)
    assert not torch.equal(ema_samples, live_samples)  # so the EMA samples above compared the EMA copy


def test_guidance_on_unconditional_model_is_a_clear_error(tmp_path):
    cfg = compose_config(
        [*FAST, *TINY_DATA, *TINY_AE, *TINY_LDM, "conditioner=none", "guidance.scale=3.0", "trainer.max_steps=1"],
        output_dir=str(tmp_path),
    )
    with pytest.raises(ConfigError, match="guidance.scale=3.0"):
        train(cfg)


def test_first_stage_checkpoint_of_another_autoencoder_is_refused(trained_ldm, tmp_path):
    cfg, _, _, _ = trained_ldm
    ae_ckpt = cfg.first_stage.ckpt
    bad = compose_config(
        [*FAST, *TINY_DATA, *TINY_LDM, "autoencoder=kl_f8_tiny", f"first_stage.ckpt={ae_ckpt}", "trainer.max_steps=1"],
        output_dir=str(tmp_path),
    )
    with pytest.raises(CheckpointError, match="downsample_factor"):
        train(bad)


def test_training_from_the_latent_cache(trained_ldm, tmp_path):
    cfg, _, _, _ = trained_ldm
    run_cfg = compose_config(
        [
            *FAST,
            *TINY_DATA,
            *TINY_AE,
            *TINY_LDM,
            "data=digits",
            "data.cache_latents=true",
            f"first_stage.ckpt={cfg.first_stage.ckpt}",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
        ],
        output_dir=str(tmp_path),
    )
    metrics = train(run_cfg)
    assert metrics["global_step"] == 2
    assert list((tmp_path / "cache" / "latents").glob("train-*.pt")), "no latent cache was written"
