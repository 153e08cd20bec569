"""The conf/autoencoder/*.yaml files: every tiny config composes, resolves, builds and runs; the full ones
build (on the meta device) with the published sizes; a short optimisation lowers the loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from latentgen.autoencoders import Autoencoder, KLRegularizer, VectorQuantizer
from latentgen.config import register_resolvers
from latentgen.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf"
FACTORS = [1, 2, 4, 8, 16, 32]
KINDS = ["kl", "vq"]
FULL = {  # f: (ch_mult, attention, z KL, z VQ) -- docs/first_stage.md, "Shipped sizes" (f1, f2: ours)
    1: ([1], [], 3, 3),
    2: ([1, 2], [], 2, 3),
    4: ([1, 2, 4], [], 3, 3),
    8: ([1, 2, 4, 4], [], 4, 4),
    16: ([1, 1, 2, 2, 4], [16], 16, 8),
    32: ([1, 1, 2, 2, 4, 4], [16, 8], 64, 16),
}


@pytest.fixture(scope="module")
def hydra_ctx():
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


def _cfg(name: str, resolution: int = 32, channels: int = 3, overrides: tuple[str, ...] = ()):
    # +ae_loss before +autoencoder: a vq_* config overrides ae_loss (its loss), which must be in the list first.
    cfg = compose(
        overrides=[
            "+perceptual=none",
            "+ae_loss=default",
            f"+autoencoder={name}",
            f"+data.resolution={resolution}",
            f"+data.channels={channels}",
            *overrides,
        ]
    )
    OmegaConf.resolve(cfg)
    return cfg


def test_every_yaml_is_covered():
    names = {p.stem for p in (CONF / "autoencoder").glob("*.yaml")}
    expected = {f"{k}_f{f}{s}" for k in KINDS for f in FACTORS for s in ("", "_tiny")} | {"identity", "diffusers"}
    assert names == expected


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("f", FACTORS)
def test_tiny_config_builds_and_runs(hydra_ctx, kind, f):
    cfg = _cfg(f"{kind}_f{f}_tiny")
    assert cfg.autoencoder.downsample_factor == f
    assert cfg.autoencoder.encoder.ch_mult == FULL[f][0]  # the tiny config keeps the full layout
    ae = instantiate(cfg.autoencoder)
    assert isinstance(ae, Autoencoder)
    assert isinstance(ae.regularizer, KLRegularizer if kind == "kl" else VectorQuantizer)
    c = cfg.autoencoder.latent_channels
    assert c == FULL[f][2 if kind == "kl" else 3]
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = ae(x)
    assert out.recon.shape == x.shape
    assert torch.isfinite(out.recon).all() and torch.isfinite(out.reg_loss)
    z = ae.encode(x)
    assert z.shape == (2, *ae.latent_shape(32)) == (2, c, 32 // f, 32 // f)
    assert ae.decode(z).shape == x.shape
    assert ae.encode_scaled(x).shape == z.shape and ae.decode_scaled(z).shape == x.shape


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("f", FACTORS)
def test_full_config_builds_with_published_sizes(hydra_ctx, kind, f):
    cfg = _cfg(f"{kind}_f{f}", resolution=256)
    ch_mult, attn, z_kl, z_vq = FULL[f]
    enc = cfg.autoencoder.encoder
    assert (enc.ch, enc.num_res_blocks, enc.ch_mult, enc.attn_resolutions) == (128, 2, ch_mult, attn)
    assert cfg.autoencoder.latent_channels == (z_kl if kind == "kl" else z_vq)
    with torch.device("meta"):
        ae = instantiate(cfg.autoencoder)
    assert ae.latent_shape(256) == (cfg.autoencoder.latent_channels, 256 // f, 256 // f)
    if kind == "vq":
        assert ae.regularizer.num_codes == (8192 if f <= 4 else 16384)
    if (kind, f) == ("kl", 8):
        # The Stable Diffusion VAE (same layout) has 83,653,863 parameters; our attention has no q/k/v biases
        # (2 attention blocks x 3 x 512).
        assert sum(p.numel() for p in ae.parameters()) == 83_653_863 - 2 * 3 * 512


def test_identity_config_is_exact(hydra_ctx):
    cfg = _cfg("identity", channels=1)
    ae = instantiate(cfg.autoencoder)
    x = torch.randn(2, 1, 32, 32)
    assert (cfg.autoencoder.downsample_factor, cfg.autoencoder.latent_channels) == (1, 1)
    assert not ae.is_trainable and len(list(ae.parameters())) == 0
    assert torch.equal(ae.encode(x), x) and torch.equal(ae.decode(x), x) and torch.equal(ae(x).recon, x)
    assert ae(x).reg_loss.item() == 0.0


def test_f_ch_mult_mismatch_raises(hydra_ctx):
    cfg = _cfg("kl_f4_tiny", overrides=("autoencoder.downsample_factor=8",))
    with pytest.raises(InstantiationException, match=r"autoencoder.downsample_factor=8.*ch_mult") as info:
        instantiate(cfg.autoencoder)
    assert isinstance(info.value.__cause__, ConfigError)  # Hydra wraps the error; the cause is ours


def test_decoder_follows_encoder_sizes(hydra_ctx):
    cfg = _cfg("vq_f8_tiny", overrides=("autoencoder.encoder.ch=8",))
    assert cfg.autoencoder.decoder.ch == 8 and cfg.autoencoder.regularizer.code_dim == 4


@pytest.mark.parametrize("name", ["kl_f4_tiny", "vq_f4_tiny"])
def test_short_optimisation_lowers_the_loss(hydra_ctx, name):
    cfg = _cfg(name, resolution=16)
    ae = instantiate(cfg.autoencoder).train()
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(8, 3, 4, 4, generator=g) * 2 - 1, size=16, mode="bilinear")
    opt = torch.optim.Adam(ae.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        out = ae(x)
        rec = (out.recon - x).abs().mean()
        loss = rec + ae.regularizer.weight * out.reg_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(rec.item())
    assert losses[-1] < 0.8 * losses[0], losses  # VQ plateaus near 0.7x without dead-code restart
