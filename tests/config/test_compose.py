"""Every config option composes and resolves; every tiny option builds and runs one forward pass."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from latentgen.conditioning.base import Conditioning
from tests.helpers import compose_config, group_options, resolved

GROUPS = ["data", "autoencoder", "denoiser", "objective", "sampler", "conditioner", "trainer", "logger", "model"]


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_a_group_composes_and_resolves(group, tmp_path):
    options = group_options(group)
    # autoencoder=diffusers reads f and the latent channels from a diffusers VAE's config.json
    (tmp_path / "config.json").write_text('{"block_out_channels": [32, 64, 64], "latent_channels": 4}')
    assert options, f"conf/{group} has no options"
    for option in options:
        overrides = [f"{group}={option}"]
        if group == "data" and option == "folder":
            overrides.append("data.root=/nonexistent")  # mandatory key; only composition is tested here
        if group == "conditioner" and option.startswith("class"):
            overrides.append("data=digits")
        if group == "autoencoder" and option == "diffusers":
            overrides.append(f"first_stage.path={tmp_path}")
        cfg = compose_config(overrides)
        resolved(cfg)  # raises on a broken interpolation


@pytest.mark.parametrize("option", [o for o in group_options("autoencoder") if o.endswith("_tiny") or o == "identity"])
def test_tiny_autoencoders_build_and_round_trip_shapes(option):
    cfg = compose_config([f"autoencoder={option}", "data=shapes", "data.resolution=32"])
    ae = instantiate(cfg.autoencoder)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = ae.encode(x)
    f = cfg.autoencoder.downsample_factor
    assert z.shape == (2, cfg.autoencoder.latent_channels, 32 // f, 32 // f)
    assert ae.decode(z).shape == x.shape


@pytest.mark.parametrize("option", [o for o in group_options("denoiser") if o.endswith(("_tiny", "_small"))])
def test_small_denoisers_build_for_the_latent_they_are_wired_to(option):
    cfg = compose_config([f"denoiser={option}", "autoencoder=kl_f4_tiny", "data=digits"])
    net = instantiate(cfg.denoiser)
    c, h = cfg.autoencoder.latent_channels, cfg.data.resolution // cfg.autoencoder.downsample_factor
    out = net(torch.randn(2, c, h, h), torch.rand(2), Conditioning())
    assert out.shape == (2, c, h, h)


def test_learned_variance_doubles_denoiser_output_channels():
    cfg = compose_config(["objective=ddpm_eps_learned_var", "autoencoder=kl_f4_tiny"])
    assert cfg.denoiser.out_channels == 2 * cfg.autoencoder.latent_channels


def test_class_conditioner_wires_context_dim_into_the_denoiser():
    cfg = compose_config(["conditioner=class", "data=digits"])
    assert cfg.denoiser.context_dim == cfg.conditioner.context_dim
    assert cfg.conditioner.num_classes == 10
