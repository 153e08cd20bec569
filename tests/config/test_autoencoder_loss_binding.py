"""The first-stage loss follows the regularizer: `autoencoder=vq_*` selects `ae_loss=vq` by itself, and a KL
loss given explicitly beside a VQ autoencoder is refused when the system is built."""

from __future__ import annotations

import pytest

from latentgen.config import instantiate
from latentgen.errors import ConfigError
from tests.helpers import FAST, compose_config, group_options

VQ = [o for o in group_options("autoencoder") if o.startswith("vq_")]


@pytest.mark.parametrize("option", VQ)
def test_every_vq_autoencoder_selects_the_vq_loss(option):
    cfg = compose_config([f"autoencoder={option}"])
    assert cfg.ae_loss.learn_logvar is False and cfg.ae_loss.disc_weight == 0.75


def test_the_default_kl_job_keeps_the_kl_loss():
    cfg = compose_config([])
    assert cfg.ae_loss.learn_logvar is True and cfg.ae_loss.disc_weight == 0.5


def test_a_vq_autoencoder_with_the_kl_loss_is_refused_naming_the_fix():
    base = [*FAST, "model=autoencoder", "perceptual=none", "discriminator=patchgan_tiny", "autoencoder=vq_f4_tiny"]
    system = instantiate(compose_config(base).model)
    assert not system.loss.learn_logvar
    with pytest.raises(ConfigError, match="ae_loss=vq"):
        instantiate(compose_config([*base, "ae_loss=default"]).model)
