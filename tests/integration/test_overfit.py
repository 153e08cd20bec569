"""A tiny latent model overfits one fixed batch through the real training path: a Lightning Trainer runs
``training_step`` (per-sample noise and times drawn by the system, the configured optimizer, the EMA update in
``optimizer_step``) on the same batch again and again; the validation loss on that batch, at validation's
fixed noise and times, falls by more than half."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from latentgen.app.building import build_latent_system, silence_expected_warnings
from latentgen.config import instantiate
from tests.helpers import compose_config

STEPS = 150


def _repeat(batch: dict, times: int) -> DataLoader:
    """The same batch ``times`` times (``batch_size=None``: each item is already a batch)."""
    return DataLoader([batch] * times, batch_size=None)


def _val_loss(trainer: L.Trainer, system, batch: dict) -> tuple[float, float]:
    out = trainer.validate(system, dataloaders=_repeat(batch, 1), verbose=False)[0]
    return float(out["val/loss"]), float(out["val/loss_ema"])


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
@pytest.mark.parametrize("objective", ["ddpm_eps", "rectified_flow"])
def test_tiny_latent_model_overfits_one_batch(objective):
    silence_expected_warnings()
    cfg = compose_config(["autoencoder=identity", "data=digits", "data.resolution=8", "denoiser=unet_tiny",
                          f"objective={objective}", "conditioner=class", "model.optimizer.lr=3e-3",
                          "model.lr_schedule=null", "model.ema_decay=0.9"])  # fmt: skip
    torch.manual_seed(0)
    system = build_latent_system(cfg, None)
    batch = instantiate(cfg.data).fixed_batch(8, split="train")
    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    before, _ = _val_loss(trainer, system, batch)
    calls = {"training_step": 0}
    training_step = system.training_step

    def counted(*args, **kwargs):
        calls["training_step"] += 1
        return training_step(*args, **kwargs)

    system.training_step = counted
    trainer.fit(system, train_dataloaders=_repeat(batch, STEPS))
    assert calls["training_step"] == STEPS and trainer.global_step == STEPS
    after, after_ema = _val_loss(trainer, system, batch)
    assert after < 0.5 * before, (before, after)
    assert after_ema < 0.5 * before, (before, after_ema)  # the EMA followed (updated in optimizer_step)
