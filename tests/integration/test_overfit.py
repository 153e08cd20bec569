"""A tiny latent model overfits one fixed batch: the loss falls by more than half."""

from __future__ import annotations

import pytest
import torch

from latentgen.app.building import build_latent_system
from latentgen.randomness import BatchRandomness
from tests.helpers import compose_config


@pytest.mark.parametrize("objective", ["ddpm_eps", "rectified_flow"])
def test_tiny_latent_model_overfits_one_batch(objective):
    cfg = compose_config(["autoencoder=identity", "data=digits", "data.resolution=8", "denoiser=unet_tiny",
                          f"objective={objective}", "conditioner=class"])
    system = build_latent_system(cfg, None)
    from hydra.utils import instantiate

    dm = instantiate(cfg.data)
    batch = dm.fixed_batch(8, split="train")
    opt = torch.optim.Adam(system.trainable.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for step in range(100):
        # The same 4 draws of (t, noise) cycle, so the target is fixed and the loss can go to ~0.
        gen.manual_seed(step % 4)
        loss, _ = system.step_loss(system.trainable, batch, BatchRandomness.local(8, gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.5 * first, (first, last)
