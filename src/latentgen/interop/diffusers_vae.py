"""diffusers ``AutoencoderKL`` folders <-> latentgen's own KL autoencoder.

Both directions go through one table, ``_KEY_TABLE``, that pairs diffusers' parameter names with latentgen's
(docs/first_stage.md, "A pretrained diffusers VAE"). The architectures agree block for block:

    diffusers config.json                  latentgen
    block_out_channels [c0, c1, ...]       encoder.ch = c0, encoder.ch_mult = [c0/c0, c1/c0, ...]
    layers_per_block                       encoder.num_res_blocks (the decoder has one more per level in both)
    norm_num_groups                        encoder.norm_groups (must divide every width: one group count)
    mid_block_add_attention                encoder.mid_attention
    (attention with q/k/v biases)          encoder.attn_qkv_bias = true
    use_quant_conv / use_post_quant_conv   quant_conv / post_quant_conv
    latent_channels                        latent_channels, f = 2**(len(block_out_channels)-1)
    scaling_factor / shift_factor          latent_scale / latent_shift: z = (mean - shift) * scale

Everything else diffusers can express (attention inside the levels, other activations, per-channel
``latents_mean``/``latents_std``, other block types) is refused with the config key named; a latentgen option
with no diffusers equivalent (VQ, attention at ``attn_resolutions``, per-layer group counts) likewise refuses
the export. diffusers itself is not imported: the weights are read and written with safetensors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from latentgen.autoencoders.autoencoder import Autoencoder
from latentgen.autoencoders.encoder_decoder import Decoder, Encoder
from latentgen.autoencoders.regularizers import KLRegularizer
from latentgen.config import (
    DIFFUSERS_VAE_CONFIG,
    DIFFUSERS_VAE_HOWTO,
    DIFFUSERS_VAE_WEIGHTS,
    diffusers_vae_dir,
    read_diffusers_vae_config,
)
from latentgen.errors import CheckpointError, ConfigError, WeightsNotFoundError
from latentgen.files import atomic_write, atomic_write_json

# (diffusers name prefix, latentgen name prefix); {ae} is encoder|decoder, {i} and {j} block indices. The first
# row whose pattern matches the start of a name renames it; the rest of the name (weight, bias) is kept.
_KEY_TABLE: tuple[tuple[str, str], ...] = (
    ("{ae}.conv_norm_out.", "{ae}.norm_out."),
    ("encoder.down_blocks.{i}.resnets.{j}.conv_shortcut.", "encoder.down.{i}.block.{j}.skip."),
    ("encoder.down_blocks.{i}.resnets.{j}.", "encoder.down.{i}.block.{j}."),
    ("encoder.down_blocks.{i}.downsamplers.0.conv.", "encoder.down.{i}.resample.conv."),
    ("decoder.up_blocks.{i}.resnets.{j}.conv_shortcut.", "decoder.up.{i}.block.{j}.skip."),
    ("decoder.up_blocks.{i}.resnets.{j}.", "decoder.up.{i}.block.{j}."),
    ("decoder.up_blocks.{i}.upsamplers.0.conv.", "decoder.up.{i}.resample.conv."),
    ("{ae}.mid_block.resnets.0.", "{ae}.mid.block_1."),
    ("{ae}.mid_block.resnets.1.", "{ae}.mid.block_2."),
    ("{ae}.mid_block.attentions.0.group_norm.", "{ae}.mid.attn_1.norm."),
    ("{ae}.mid_block.attentions.0.to_q.", "{ae}.mid.attn_1.attn.to_q."),
    ("{ae}.mid_block.attentions.0.to_k.", "{ae}.mid.attn_1.attn.to_k."),
    ("{ae}.mid_block.attentions.0.to_v.", "{ae}.mid.attn_1.attn.to_v."),
    ("{ae}.mid_block.attentions.0.to_out.0.", "{ae}.mid.attn_1.attn.to_out."),
    ("{ae}.conv_in.", "{ae}.conv_in."),
    ("{ae}.conv_out.", "{ae}.conv_out."),
    ("quant_conv.", "quant_conv."),
    ("post_quant_conv.", "post_quant_conv."),
)
# Attention names of diffusers files written before its attention refactor (diffusers renames them on load too).
_DEPRECATED_ATTENTION = {"query.": "to_q.", "key.": "to_k.", "value.": "to_v.", "proj_attn.": "to_out.0."}
_GROUPS = {"ae": r"(?P<ae>encoder|decoder)", "i": r"(?P<i>\d+)", "j": r"(?P<j>\d+)"}
_LATENT_BUFFERS = ("latent_scale", "latent_shift")


def _compile(template: str) -> re.Pattern[str]:
    pattern = re.escape(template)
    for name, group in _GROUPS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), group)
    return re.compile(pattern)


_TO_LATENTGEN = tuple((_compile(d), lg) for d, lg in _KEY_TABLE)
_TO_DIFFUSERS = tuple((_compile(lg), d) for d, lg in _KEY_TABLE)


def _rename(key: str, table: tuple[tuple[re.Pattern[str], str], ...]) -> str | None:
    for pattern, target in table:
        m = pattern.match(key)
        if m:
            return target.format(**m.groupdict()) + key[m.end() :]
    return None


def diffusers_key_to_latentgen(key: str) -> str | None:
    """latentgen's name of a diffusers ``AutoencoderKL`` parameter (old attention names included), or None."""
    for old, new in _DEPRECATED_ATTENTION.items():
        key = re.sub(r"(mid_block\.attentions\.0\.)" + re.escape(old), r"\g<1>" + new, key)
    return _rename(key, _TO_LATENTGEN)


def latentgen_key_to_diffusers(key: str) -> str | None:
    """diffusers' name of a latentgen KL autoencoder parameter, or None (e.g. the latent scale buffers)."""
    return _rename(key, _TO_DIFFUSERS)


# ------------------------------------------------------------------------------------ config: diffusers -> ours
def _refuse(config_path: Path | str, key: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"{config_path}: {key}={value!r} cannot be loaded into latentgen's autoencoder: {why}")


def autoencoder_kwargs_from_diffusers(config: dict[str, Any], where: Path | str = DIFFUSERS_VAE_CONFIG) -> dict:
    """Keyword arguments of latentgen's Encoder/Decoder/Autoencoder for a diffusers ``AutoencoderKL`` config.

    Returns ``{"encoder": {...}, "decoder": {...}, "autoencoder": {...}, "scale": float, "shift": float}``;
    raises :class:`ConfigError` naming the first key latentgen's blocks cannot express.
    """
    cls = config.get("_class_name", "AutoencoderKL")
    if cls != "AutoencoderKL":
        raise _refuse(where, "_class_name", cls, "only AutoencoderKL folders load (no temporal/video/VQ variants)")
    boc = [int(c) for c in config.get("block_out_channels", (64,))]
    n = len(boc)
    for key, want in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        types = list(config.get(key, (want,)))
        if len(types) != n or any(t != want for t in types):
            raise _refuse(where, key, types, f"every block must be {want} ({n} of them, one per block_out_channels)")
    if config.get("act_fn", "silu") != "silu":
        raise _refuse(where, "act_fn", config.get("act_fn"), "latentgen's blocks use SiLU")
    for key in ("latents_mean", "latents_std"):
        if config.get(key) is not None:
            raise _refuse(where, key, "[...]", "per-channel latent statistics; latentgen keeps one scale and shift")
    ch = boc[0]
    if any(c % ch for c in boc):
        raise _refuse(where, "block_out_channels", boc, f"every width must be a multiple of the first ({ch})")
    groups = int(config.get("norm_num_groups", 32))
    if any(c % groups for c in boc):
        raise _refuse(where, "norm_num_groups", groups, f"must divide every width of block_out_channels {boc}")
    in_ch, out_ch = int(config.get("in_channels", 3)), int(config.get("out_channels", 3))
    if in_ch != out_ch:
        raise _refuse(where, "out_channels", out_ch, f"latentgen's decoder returns the in_channels ({in_ch})")
    layers = int(config.get("layers_per_block", 1))
    latent_channels = int(config.get("latent_channels", 4))
    common = {
        "ch": ch,
        "ch_mult": [c // ch for c in boc],
        "num_res_blocks": layers,
        "attn_resolutions": [],
        "dropout": 0.0,
        "mid_block": True,
        "mid_attention": bool(config.get("mid_block_add_attention", True)),
        "norm_groups": groups,
        "attn_qkv_bias": True,
    }
    shift = config.get("shift_factor")
    return {
        "encoder": {"in_channels": in_ch, "out_channels": 2 * latent_channels, **common},
        "decoder": {"out_channels": out_ch, "in_channels": latent_channels, **common},
        "autoencoder": {
            "downsample_factor": 2 ** (n - 1),
            "latent_channels": latent_channels,
            "quant_conv": bool(config.get("use_quant_conv", True)),
            "post_quant_conv": bool(config.get("use_post_quant_conv", True)),
        },
        "scale": float(config.get("scaling_factor", 0.18215)),
        "shift": 0.0 if shift is None else float(shift),
    }


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = folder / DIFFUSERS_VAE_WEIGHTS
    if not path.is_file():
        pickled = [p.name for p in folder.glob("diffusion_pytorch_model*.bin")]
        found = f" (found {pickled}: latentgen reads safetensors only, never pickles)" if pickled else ""
        raise WeightsNotFoundError(f"'{folder}' has {DIFFUSERS_VAE_CONFIG} but no {DIFFUSERS_VAE_WEIGHTS}{found}. "
                                   f"{DIFFUSERS_VAE_HOWTO}")  # fmt: skip
    return load_file(str(path))


def autoencoder_from_diffusers(
    path: str,
    resolution: int,
    downsample_factor: int | None = None,
    latent_channels: int | None = None,
) -> Autoencoder:
    """A frozen latentgen :class:`Autoencoder` holding the weights of the diffusers ``AutoencoderKL`` at ``path``.

    Args:
        path: an ``AutoencoderKL`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``) or a
            pipeline folder with them in ``vae/``.
        resolution: the image size (``${data.resolution}``), checked against f.
        downsample_factor, latent_channels: what the run config expects (``autoencoder=diffusers`` reads them
            from the same config.json); a disagreement is an error.

    f, the latent channels, ``scaling_factor`` and ``shift_factor`` come from ``config.json``; encode/decode
    equal diffusers' (``latent_dist.mode()`` / ``decode``) on the same input.
    """
    folder = diffusers_vae_dir(path)
    config = read_diffusers_vae_config(folder)
    kwargs = autoencoder_kwargs_from_diffusers(config, folder / DIFFUSERS_VAE_CONFIG)
    ae_kwargs = kwargs["autoencoder"]
    for key, want in (("downsample_factor", downsample_factor), ("latent_channels", latent_channels)):
        if want is not None and int(want) != ae_kwargs[key]:
            raise ConfigError(f"autoencoder.{key}={want} but {folder / DIFFUSERS_VAE_CONFIG} gives {ae_kwargs[key]}")
    state = _read_weights(folder)
    name = folder.name if folder.name != "vae" else f"{folder.parent.name}/vae"
    autoencoder = Autoencoder(
        Encoder(resolution=int(resolution), **kwargs["encoder"]),
        KLRegularizer(),
        Decoder(resolution=int(resolution), **kwargs["decoder"]),
        pretrained=name,
        **ae_kwargs,
    )
    ours = {k: v for k, v in autoencoder.state_dict().items() if k not in _LATENT_BUFFERS}
    mapped, unknown = {}, []
    for key, value in state.items():
        new = diffusers_key_to_latentgen(key)
        if new is None or new not in ours:
            unknown.append(key)
            continue
        if value.dim() == 4 and ours[new].dim() == 2:  # attention projections stored as 1x1 convs
            value = value[:, :, 0, 0]  # (C_out, C_in, 1, 1) -> (C_out, C_in)
        if value.shape != ours[new].shape:
            raise CheckpointError(
                f"'{folder / DIFFUSERS_VAE_WEIGHTS}': {key} has shape {tuple(value.shape)}, but its config.json "
                f"describes {tuple(ours[new].shape)}"
            )
        mapped[new] = value.to(ours[new].dtype)
    missing = sorted(set(ours) - set(mapped))
    if unknown or missing:
        raise CheckpointError(
            f"'{folder / DIFFUSERS_VAE_WEIGHTS}' does not fit the AutoencoderKL its config.json describes: "
            f"unknown weights {unknown[:8]}, missing weights {[latentgen_key_to_diffusers(k) for k in missing[:8]]}"
        )
    autoencoder.load_state_dict(mapped, strict=False)
    autoencoder.set_latent_stats(kwargs["scale"], kwargs["shift"])
    return autoencoder.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------ export: ours -> diffusers
def _refuse_export(option: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"autoencoder.{option}={value!r} has no diffusers AutoencoderKL equivalent: {why}")


def _short_float(value: torch.Tensor) -> float:
    """The shortest decimal that reads back as the same float32 (0.18215, not 0.1821500062942505)."""
    return float(str(value.detach().cpu().float().numpy()))


def diffusers_config_of(autoencoder: Autoencoder) -> dict[str, Any]:
    """The diffusers ``AutoencoderKL`` config.json of a latentgen KL autoencoder; refuses what does not map."""
    reg, enc, dec = autoencoder.regularizer, autoencoder.encoder, autoencoder.decoder
    if not isinstance(reg, KLRegularizer):
        raise _refuse_export("regularizer", type(reg).__name__, "only the KL regularizer maps (AutoencoderKL)")
    if (reg.logvar_min, reg.logvar_max) != (-30.0, 20.0):
        raise _refuse_export("regularizer.logvar_min", reg.logvar_min, "diffusers clamps the log-variance to [-30, 20]")
    for name, module, cls in (("encoder", enc, Encoder), ("decoder", dec, Decoder)):
        if type(module) is not cls:
            raise _refuse_export(f"{name}._target_", type(module).__name__, f"only latentgen's {cls.__name__} maps")
    assert isinstance(enc, Encoder) and isinstance(dec, Decoder)
    if enc.attn_resolutions:
        raise _refuse_export("encoder.attn_resolutions", list(enc.attn_resolutions), "AutoencoderKL has attention "
                             "only in the mid block; use attn_resolutions: []")  # fmt: skip
    if isinstance(enc.mid, torch.nn.Identity):
        raise _refuse_export("encoder.mid_block", False, "AutoencoderKL always has the mid block")
    for key in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "norm_groups", "attn_qkv_bias"):
        if getattr(enc, key) != getattr(dec, key):
            raise _refuse_export(f"decoder.{key}", getattr(dec, key), f"AutoencoderKL's decoder mirrors the encoder "
                                 f"(encoder.{key}={getattr(enc, key)!r})")  # fmt: skip
    enc_attn = not isinstance(getattr(enc.mid, "attn_1", None), torch.nn.Identity)
    dec_attn = not isinstance(getattr(dec.mid, "attn_1", torch.nn.Identity()), torch.nn.Identity)
    if enc_attn != dec_attn or isinstance(dec.mid, torch.nn.Identity):
        raise _refuse_export("decoder.mid_attention", dec_attn, "AutoencoderKL's decoder mirrors the encoder")
    widths = [enc.ch * m for m in enc.ch_mult]
    groups = {math.gcd(c, enc.norm_groups) for c in widths}
    if len(groups) != 1:
        fit = math.gcd(enc.norm_groups, *widths)
        raise _refuse_export("encoder.norm_groups", enc.norm_groups, f"the widths {widths} give per-layer group counts "
                             f"{sorted(groups)}, diffusers has one norm_num_groups for all; train with "
                             f"autoencoder.encoder.norm_groups={fit}")  # fmt: skip
    has_quant = not isinstance(autoencoder.quant_conv, torch.nn.Identity)
    has_post = not isinstance(autoencoder.post_quant_conv, torch.nn.Identity)
    scale, shift = _short_float(autoencoder.latent_scale), _short_float(autoencoder.latent_shift)
    n = len(widths)
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": enc.in_channels,
        "out_channels": dec.out_channels,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": widths,
        "layers_per_block": enc.num_res_blocks,
        "act_fn": "silu",
        "latent_channels": autoencoder.latent_channels,
        "norm_num_groups": groups.pop(),
        "sample_size": enc.resolution,
        "scaling_factor": scale,
        "shift_factor": shift if shift != 0.0 else None,
        "latents_mean": None,
        "latents_std": None,
        "force_upcast": True,
        "use_quant_conv": has_quant,
        "use_post_quant_conv": has_post,
        "mid_block_add_attention": enc_attn,
    }


def diffusers_state_dict_of(autoencoder: Autoencoder) -> dict[str, torch.Tensor]:
    """The weights of a latentgen KL autoencoder under diffusers' names (zero q/k/v biases where it has none)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in autoencoder.state_dict().items():
        if key in _LATENT_BUFFERS:
            continue
        new = latentgen_key_to_diffusers(key)
        if new is None:
            raise ConfigError(f"autoencoder parameter '{key}' has no diffusers AutoencoderKL equivalent")
        out[new] = value.detach().cpu().contiguous()
    for name in list(out):  # attention without q/k/v biases = diffusers' attention with zero biases
        m = re.fullmatch(r"(.*\.attentions\.0\.to_[qkv])\.weight", name)
        if m and f"{m.group(1)}.bias" not in out:
            out[f"{m.group(1)}.bias"] = torch.zeros(out[name].shape[0], dtype=out[name].dtype)
    return out


def save_vae_as_diffusers(autoencoder: Autoencoder, out_dir: Path) -> None:
    """Write ``autoencoder`` as a diffusers ``AutoencoderKL`` folder: ``config.json`` and
    ``diffusion_pytorch_model.safetensors`` in ``out_dir`` (created), with ``scaling_factor`` / ``shift_factor``
    from its latent scale and shift. ``AutoencoderKL.from_pretrained(out_dir)`` then encodes (``mode()``) and
    decodes as ``autoencoder.encode`` / ``decode`` do. Refuses (:class:`ConfigError`, naming the option) a VQ
    or identity autoencoder and options diffusers cannot express."""
    from safetensors.torch import save

    config = diffusers_config_of(autoencoder)
    state = diffusers_state_dict_of(autoencoder)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write: Callable[[Any], Any] = lambda f: f.write(save(state, metadata={"format": "pt"}))  # noqa: E731
    atomic_write(out_dir / DIFFUSERS_VAE_WEIGHTS, write)
    atomic_write_json(out_dir / DIFFUSERS_VAE_CONFIG, config)


__all__ = [
    "autoencoder_from_diffusers",
    "autoencoder_kwargs_from_diffusers",
    "diffusers_config_of",
    "diffusers_key_to_latentgen",
    "diffusers_state_dict_of",
    "latentgen_key_to_diffusers",
    "save_vae_as_diffusers",
]
