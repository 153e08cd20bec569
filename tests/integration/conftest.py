"""Fixtures shared by the integration tests: one tiny two-stage run per session."""

from __future__ import annotations

import pytest

from latentgen.app.training import train
from tests.helpers import FAST, TINY_AE, TINY_DATA, TINY_LDM, compose_config


@pytest.fixture(scope="session")
def trained_ldm(tmp_path_factory):
    """AE (6 steps) then latent diffusion (6 steps), class-conditional, trained in one call."""
    out = tmp_path_factory.mktemp("ldm")
    overrides = [
        *FAST,
        *TINY_DATA,
        *TINY_AE,
        *TINY_LDM,
        "data=digits",
        "conditioner=class",
        "guidance.scale=2.0",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "sample_every_n_steps=3",
        "callbacks.model_checkpoint.every_n_train_steps=3",
    ]
    cfg = compose_config(overrides, output_dir=str(out))
    metrics = train(cfg)
    return cfg, out, metrics, overrides
