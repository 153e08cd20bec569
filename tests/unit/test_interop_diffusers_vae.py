"""A diffusers AutoencoderKL folder as latentgen's first stage, and a latentgen KL autoencoder written as one:
random-weight models made and saved by diffusers itself, compared with diffusers' encode/decode to 1e-5."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from latentgen.config import instantiate
from latentgen.errors import ConfigError, WeightsNotFoundError
from latentgen.interop.diffusers_vae import (
    autoencoder_from_diffusers,
    diffusers_key_to_latentgen,
    latentgen_key_to_diffusers,
    save_vae_as_diffusers,
)
from tests.helpers import compose_config, make_diffusers_vae

diffusers = pytest.importorskip("diffusers")

# (name, config overrides of the tiny SD-like default, resolution)
CONFIGS = [
    ("sd_like", {}, 16),  # 4 channels, 0.18215, mid attention, quant convs
    (
        "sdxl_like",
        {"block_out_channels": [16, 32, 32], "layers_per_block": 2, "norm_num_groups": 16, "scaling_factor": 0.13025},
        16,
    ),
    (
        "flux_like",  # 16 channels, shift, no quant convs, no mid attention, 8 groups
        {
            "block_out_channels": [8, 16, 16],
            "latent_channels": 16,
            "norm_num_groups": 8,
            "scaling_factor": 0.3611,
            "shift_factor": 0.1159,
            "use_quant_conv": False,
            "use_post_quant_conv": False,
            "mid_block_add_attention": False,
        },
        16,
    ),
    ("post_quant_only", {"use_quant_conv": False, "layers_per_block": 3}, 8),
]


def _assert_same_as_diffusers(vae, ae, resolution: int) -> None:
    x = torch.rand(2, vae.config.in_channels, resolution, resolution, generator=torch.Generator().manual_seed(1))
    x = x * 2 - 1
    with torch.no_grad():
        mode = vae.encode(x).latent_dist.mode()
        torch.testing.assert_close(ae.encode(x), mode, atol=1e-5, rtol=0)
        torch.testing.assert_close(ae.decode(mode), vae.decode(mode).sample, atol=1e-5, rtol=0)
        shift = vae.config.shift_factor or 0.0
        torch.testing.assert_close(ae.encode_scaled(x), (mode - shift) * vae.config.scaling_factor, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name,config,resolution", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_imported_vae_encodes_and_decodes_as_diffusers(tmp_path, name, config, resolution):
    folder = make_diffusers_vae(tmp_path / name, **config)
    vae = diffusers.AutoencoderKL.from_pretrained(folder).eval()
    ae = autoencoder_from_diffusers(str(folder), resolution)
    boc = vae.config.block_out_channels
    assert ae.downsample_factor == 2 ** (len(boc) - 1) and ae.latent_channels == vae.config.latent_channels
    assert float(ae.latent_scale) == pytest.approx(vae.config.scaling_factor)
    assert float(ae.latent_shift) == pytest.approx(vae.config.shift_factor or 0.0)
    assert not ae.is_trainable and ae.pretrained == name and not any(p.requires_grad for p in ae.parameters())
    _assert_same_as_diffusers(vae, ae, resolution)


def test_pipeline_folder_and_pre_refactor_attention_names_load(tmp_path):
    """A pipeline folder's vae/ loads; so do weights written with diffusers' old attention names (query, key,
    value, proj_attn)."""
    make_diffusers_vae(tmp_path / "pipe" / "vae")
    vae = diffusers.AutoencoderKL.from_pretrained(tmp_path / "pipe" / "vae").eval()
    ae = autoencoder_from_diffusers(str(tmp_path / "pipe"), 16)
    assert ae.pretrained == "pipe/vae"
    _assert_same_as_diffusers(vae, ae, 16)

    weights = tmp_path / "pipe" / "vae" / "diffusion_pytorch_model.safetensors"
    old = {"to_q.": "query.", "to_k.": "key.", "to_v.": "value.", "to_out.0.": "proj_attn."}
    renamed = {}
    for key, value in load_file(str(weights)).items():
        for new, was in old.items():
            key = key.replace(f"attentions.0.{new}", f"attentions.0.{was}")
        renamed[key] = value
    assert any("proj_attn" in k for k in renamed)
    save_file(renamed, str(weights))
    _assert_same_as_diffusers(vae, autoencoder_from_diffusers(str(tmp_path / "pipe"), 16), 16)


@pytest.mark.parametrize(
    "key,value",
    [
        ("act_fn", "relu"),
        ("down_block_types", ["AttnDownEncoderBlock2D", "DownEncoderBlock2D"]),
        ("latents_mean", [0.0, 0.0, 0.0, 0.0]),
        ("block_out_channels", [32, 48]),
        ("_class_name", "AutoencoderKLTemporalDecoder"),
    ],
)
def test_unmappable_config_is_refused_naming_the_key(tmp_path, key, value):
    folder = make_diffusers_vae(tmp_path / "vae")
    config = json.loads((folder / "config.json").read_text())
    config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=key):
        autoencoder_from_diffusers(str(folder), 16)


def test_missing_folder_or_weights_names_the_file_to_get(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist.*sd-vae-ft-ema.*config.json"):
        autoencoder_from_diffusers(str(tmp_path / "nowhere"), 16)
    folder = make_diffusers_vae(tmp_path / "vae")
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match="no diffusion_pytorch_model.safetensors"):
        autoencoder_from_diffusers(str(folder), 16)
    with pytest.raises(ConfigError, match="first_stage.path"):
        autoencoder_from_diffusers(None, 16)  # type: ignore[arg-type]


def test_run_config_disagreeing_with_config_json_is_refused(tmp_path):
    folder = make_diffusers_vae(tmp_path / "vae")
    with pytest.raises(ConfigError, match="latent_channels=16"):
        autoencoder_from_diffusers(str(folder), 16, latent_channels=16)


# ------------------------------------------------------------------------------------------------ export
# The tiny configs' widths 16/32/64 get 16/32/32 GroupNorm groups by default; diffusers has one count for all.
GROUPS_16 = ["+autoencoder.encoder.norm_groups=16", "+autoencoder.decoder.norm_groups=16"]


def _tiny_kl(overrides: list[str], tmp_path, scale: float = 0.5, shift: float = 0.1):
    cfg = compose_config(["data.resolution=16", *overrides], output_dir=str(tmp_path))
    torch.manual_seed(0)
    ae = instantiate(cfg.autoencoder).eval()
    with torch.no_grad():
        for p in ae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ae.set_latent_stats(scale, shift)
    return ae


@pytest.mark.parametrize(
    "overrides", [["autoencoder=kl_f8_tiny"], ["autoencoder=kl_f2_tiny", "autoencoder.quant_conv=false"]]
)
def test_saved_kl_autoencoder_opens_in_diffusers_with_the_same_encode_decode(tmp_path, overrides):
    overrides = [*overrides, *GROUPS_16]
    ae = _tiny_kl(overrides, tmp_path)
    save_vae_as_diffusers(ae, tmp_path / "vae")
    vae = diffusers.AutoencoderKL.from_pretrained(tmp_path / "vae").eval()
    assert vae.config.scaling_factor == 0.5 and vae.config.shift_factor == pytest.approx(0.1)
    _assert_same_as_diffusers(vae, ae, 16)
    again = autoencoder_from_diffusers(str(tmp_path / "vae"), 16)  # and back into latentgen
    _assert_same_as_diffusers(vae, again, 16)


@pytest.mark.parametrize(
    "overrides,option",
    [
        (["autoencoder=vq_f4_tiny"], "regularizer"),
        (["autoencoder=kl_f16_tiny", *GROUPS_16], "attn_resolutions"),
        (["autoencoder=kl_f8_tiny"], "norm_groups"),  # widths 16/32/64 with 32 groups: 16, 32, 32 groups
        (["autoencoder=kl_f8_tiny", *GROUPS_16, "autoencoder.decoder.num_res_blocks=2"],
         "decoder.num_res_blocks"),
        (["autoencoder=identity"], "regularizer"),
    ],
)  # fmt: skip
def test_export_refuses_options_without_a_diffusers_equivalent(tmp_path, overrides, option):
    ae = _tiny_kl(overrides, tmp_path, scale=1.0, shift=0.0)
    with pytest.raises(ConfigError, match=option):
        save_vae_as_diffusers(ae, tmp_path / "vae")
    assert not (tmp_path / "vae" / "config.json").exists()


def test_key_table_maps_every_parameter_both_ways(tmp_path):
    ae = _tiny_kl(["autoencoder=kl_f8_tiny", *GROUPS_16], tmp_path)
    vae = diffusers.AutoencoderKL(
        block_out_channels=[16, 32, 64, 64], layers_per_block=1, latent_channels=4, norm_num_groups=16,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    )  # fmt: skip
    theirs = set(vae.state_dict())
    ours = {k for k in ae.state_dict() if k not in ("latent_scale", "latent_shift")}
    assert {latentgen_key_to_diffusers(k) for k in ours} == {k for k in theirs if not k.endswith(("to_q.bias",
                                                                                                 "to_k.bias",
                                                                                                 "to_v.bias"))}  # fmt: skip
    assert all(diffusers_key_to_latentgen(latentgen_key_to_diffusers(k)) == k for k in ours)  # type: ignore[arg-type]


# The config.json of the published VAEs (their architecture keys), built on the meta device: no weights, no download.
_PUBLISHED = {
    "sd-vae-ft-ema": {"latent_channels": 4},  # SD 1.x/2.x: scaling_factor defaults to 0.18215
    "sdxl-vae": {"latent_channels": 4, "scaling_factor": 0.13025, "sample_size": 1024},
    "sd3-vae": {"latent_channels": 16, "scaling_factor": 1.5305, "shift_factor": 0.0609},
    "flux-vae": {"latent_channels": 16, "scaling_factor": 0.3611, "shift_factor": 0.1159},
}


@pytest.mark.parametrize("name", sorted(_PUBLISHED))
def test_published_vae_architectures_map_weight_for_weight(name):
    from latentgen.autoencoders.autoencoder import Autoencoder
    from latentgen.autoencoders.encoder_decoder import Decoder, Encoder
    from latentgen.autoencoders.regularizers import KLRegularizer
    from latentgen.interop.diffusers_vae import autoencoder_kwargs_from_diffusers

    config = {
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "in_channels": 3,
        "out_channels": 3,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "sample_size": 512,
        **_PUBLISHED[name],
    }
    if config["latent_channels"] == 16:  # SD3 and FLUX have no quant convs
        config.update(use_quant_conv=False, use_post_quant_conv=False)
    kwargs = autoencoder_kwargs_from_diffusers(config)
    assert kwargs["encoder"]["ch"] == 128 and kwargs["encoder"]["ch_mult"] == [1, 2, 4, 4]
    assert kwargs["autoencoder"]["downsample_factor"] == 8
    assert kwargs["scale"] == config.get("scaling_factor", 0.18215) and kwargs["shift"] == config.get("shift_factor", 0)
    with torch.device("meta"):
        theirs = diffusers.AutoencoderKL(**{k: v for k, v in config.items() if not k.startswith("_")})
        ours = Autoencoder(
            Encoder(resolution=256, **kwargs["encoder"]),
            KLRegularizer(),
            Decoder(resolution=256, **kwargs["decoder"]),
            **kwargs["autoencoder"],
        )
    mapped = {
        latentgen_key_to_diffusers(k): tuple(v.shape)
        for k, v in ours.state_dict().items()
        if k not in ("latent_scale", "latent_shift")
    }
    assert mapped == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
