"""Autoencoder wiring: consistency checks, latent scale buffers, scaled encode/decode, and parity of the
KL network with diffusers' AutoencoderKL (the LDM layout) after a weight mapping."""

from __future__ import annotations

import re

import pytest
import torch

from latentgen.autoencoders import (
    Autoencoder,
    Decoder,
    Encoder,
    IdentityDecoder,
    IdentityEncoder,
    IdentityRegularizer,
    KLRegularizer,
    VectorQuantizer,
)
from latentgen.errors import ConfigError

NET = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, resolution=16)


def _kl_ae(latent_channels: int = 2, f: int = 2, **net) -> Autoencoder:
    kw = {**NET, **net}
    enc = Encoder(in_channels=3, out_channels=2 * latent_channels, **kw)
    dec = Decoder(out_channels=3, in_channels=latent_channels, **kw)
    return Autoencoder(enc, KLRegularizer(), dec, downsample_factor=f, latent_channels=latent_channels)


def test_shapes_and_output():
    ae = _kl_ae()
    x = torch.randn(2, 3, 16, 16)
    out = ae(x)
    assert out.recon.shape == x.shape and out.reg_loss.ndim == 0 and "kl" in out.log
    assert ae.encode(x).shape == (2, 2, 8, 8) == (2, *ae.latent_shape(16))
    assert ae.decode(ae.encode(x)).shape == x.shape
    assert ae.latent_shape((16, 32)) == (2, 8, 16)
    assert ae.last_layer is ae.decoder.conv_out.weight and ae.is_trainable


def test_encoder_decoder_with_attention_levels():
    enc = Encoder(3, 8, (1, 2, 2), 2, 4, resolution=16, attn_resolutions=(8,))
    dec = Decoder(3, 8, (1, 2, 2), 2, 2, resolution=16, attn_resolutions=(8,))
    assert [len(level.attn) for level in enc.down] == [0, 2, 0]
    assert [len(level.attn) for level in dec.up] == [0, 3, 0]  # num_res_blocks + 1 per decoder level
    ae = Autoencoder(enc, KLRegularizer(), dec, downsample_factor=4, latent_channels=2)
    assert ae(torch.randn(1, 3, 16, 16)).recon.shape == (1, 3, 16, 16)


def test_mismatched_f_raises_config_error_naming_keys():
    with pytest.raises(ConfigError, match=r"downsample_factor=4.*encoder\.ch_mult=\[1, 2\].*2"):
        _kl_ae(f=4)


def test_mismatched_channels_raise_config_error():
    enc = Encoder(3, out_channels=2, **NET)  # KL needs 2 * latent_channels = 4
    dec = Decoder(3, in_channels=2, **NET)
    with pytest.raises(ConfigError, match=r"encoder\.out_channels=2.*latent_channels \(2\).*mul"):
        Autoencoder(enc, KLRegularizer(), dec, 2, 2)
    with pytest.raises(ConfigError, match=r"decoder\.in_channels=2.*latent_channels=3"):
        Autoencoder(Encoder(3, out_channels=3, **NET), IdentityRegularizer(), dec, 2, 3)
    with pytest.raises(ConfigError, match="code_dim=4"):
        Autoencoder(Encoder(3, out_channels=2, **NET), VectorQuantizer(16, 4), dec, 2, 2)
    with pytest.raises(ConfigError, match="data.channels"):
        Autoencoder(Encoder(1, out_channels=4, **NET), KLRegularizer(), dec, 2, 2)
    with pytest.raises(ConfigError, match="power of two"):
        Autoencoder(IdentityEncoder(3), IdentityRegularizer(), IdentityDecoder(3), 3, 3)
    with pytest.raises(ConfigError, match="not divisible"):
        Encoder(3, out_channels=4, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, resolution=6)
    with pytest.raises(ConfigError, match="not divisible"):
        _kl_ae().latent_shape(15)


def test_latent_scale_buffers_persist_and_are_updated_in_place():
    ae = _kl_ae()
    scale_buf, shift_buf = ae.latent_scale, ae.latent_shift
    assert scale_buf.item() == 1.0 and shift_buf.item() == 0.0
    ae.set_latent_stats(0.25, torch.tensor(0.5))
    assert ae.latent_scale is scale_buf and ae.latent_shift is shift_buf  # never re-registered
    assert (ae.latent_scale.item(), ae.latent_shift.item()) == (0.25, 0.5)
    sd = ae.state_dict()
    assert sd["latent_scale"].item() == 0.25 and sd["latent_shift"].item() == 0.5
    other = _kl_ae()
    other.load_state_dict(sd)
    assert (other.latent_scale.item(), other.latent_shift.item()) == (0.25, 0.5)
    with pytest.raises(ConfigError):
        ae.set_latent_stats(torch.ones(3))
    with pytest.raises(ConfigError):
        ae.set_latent_stats(0.0)


def test_scaled_encode_decode():
    ae = _kl_ae().eval()
    ae.set_latent_stats(0.5, 0.25)
    x = torch.randn(2, 3, 16, 16)
    z = ae.encode(x)
    torch.testing.assert_close(ae.encode_scaled(x), (z - 0.25) * 0.5)
    torch.testing.assert_close(ae.decode_scaled((z - 0.25) * 0.5), ae.decode(z))
    g = torch.Generator().manual_seed(0)
    s1 = ae.encode_scaled(x, sample=True, generator=g)
    s2 = ae.encode_scaled(x, sample=True, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(s1, s2)


def test_vq_autoencoder_decodes_quantized_pre_quantization_latent():
    enc, dec = Encoder(3, out_channels=2, **NET), Decoder(3, in_channels=2, **NET)
    ae = Autoencoder(enc, VectorQuantizer(16, 2), dec, 2, 2).eval()
    x = torch.randn(2, 3, 16, 16)
    h = ae.encode(x)  # pre-quantization
    torch.testing.assert_close(h, ae.quant_conv(ae.encoder(x)))
    torch.testing.assert_close(ae.decode(h), ae(x).recon, atol=1e-4, rtol=1e-4)  # z + sg[e - z] vs e


def test_identity_autoencoder_is_exact_and_has_no_parameters():
    ae = Autoencoder(IdentityEncoder(3), IdentityRegularizer(), IdentityDecoder(3), 1, 3, quant_conv=False)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(ae.encode(x), x) and torch.equal(ae.decode(x), x) and torch.equal(ae(x).recon, x)
    assert not ae.is_trainable and ae.latent_shape(8) == (3, 8, 8)
    with pytest.raises(ConfigError, match="last layer"):
        _ = ae.last_layer


# ------------------------------------------------------------------------------ parity with diffusers
def _diffusers_to_ours(key: str) -> str:
    """Map a diffusers AutoencoderKL state-dict key to ours."""
    rules = [
        (r"down_blocks\.(\d+)\.resnets\.(\d+)\.", r"down.\1.block.\2."),
        (r"down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.resample."),
        (r"up_blocks\.(\d+)\.resnets\.(\d+)\.", r"up.\1.block.\2."),
        (r"up_blocks\.(\d+)\.upsamplers\.0\.", r"up.\1.resample."),
        (r"mid_block\.resnets\.0\.", "mid.block_1."),
        (r"mid_block\.resnets\.1\.", "mid.block_2."),
        (r"mid_block\.attentions\.0\.group_norm\.", "mid.attn_1.norm."),
        (r"mid_block\.attentions\.0\.to_out\.0\.", "mid.attn_1.attn.to_out."),
        (r"mid_block\.attentions\.0\.(to_[qkv])\.", r"mid.attn_1.attn.\1."),
        (r"conv_shortcut\.", "skip."),
        (r"conv_norm_out\.", "norm_out."),
    ]
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def test_parity_with_diffusers_autoencoder_kl():
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=16,
    ).eval()
    ours = _kl_ae(latent_channels=4, ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=16).eval()
    mapped = {}
    for key, value in ref.state_dict().items():
        if re.search(r"attentions\.0\.to_[qkv]\.bias$", key):
            value.zero_()  # our SpatialSelfAttention has no q/k/v biases
            continue
        mapped[_diffusers_to_ours(key)] = value
    mapped["latent_scale"], mapped["latent_shift"] = ours.latent_scale, ours.latent_shift
    ours.load_state_dict(mapped, strict=True)
    assert sum(p.numel() for p in ours.parameters()) + 3 * 2 * 64 == sum(p.numel() for p in ref.parameters())

    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        post = ref.encode(x).latent_dist
        mean, logvar = ours.regularizer.moments(ours.encode_raw(x))
        torch.testing.assert_close(mean, post.mean, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(logvar, post.logvar, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours.decode(mean), ref.decode(post.mean).sample, atol=1e-5, rtol=1e-4)
