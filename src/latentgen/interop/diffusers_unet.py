"""latentgen's UNet <-> diffusers' ``UNet2DModel`` / ``UNet2DConditionModel``: config and weights, both ways.

The two networks are the same graph when the latentgen UNet is built as diffusers builds its UNets:

- ``attention_type="plain"`` (AttentionBlock) <-> ``UNet2DModel`` with ``AttnDownBlock2D`` / ``AttnUpBlock2D`` at the
  attention levels and ``UNetMidBlock2D``; ``attention_type="transformer"`` with ``context_dim`` <->
  ``UNet2DConditionModel`` with ``CrossAttnDownBlock2D`` / ``CrossAttnUpBlock2D`` and ``UNetMidBlock2DCrossAttn``.
- Strided-conv downsampling with LDM's asymmetric padding is ``downsample_padding=0``; ResBlocks with
  ``scale_shift_norm`` are ``resnet_time_scale_shift="scale_shift"``; every GroupNorm has the same number of
  groups (``norm_num_groups``) and eps 1e-6 (``norm_eps``).
- A class vector added to the time embedding, ``Linear(Embedding(label))``, is one ``nn.Embedding`` of diffusers
  (``num_class_embeds``; the table is folded through the linear map). The null class of CFG is the last row.

**Time.** latentgen embeds ``time_scale * t`` (``time_scale = 1000``). A discrete schedule evaluates the network at
``t = (k + 1) / T`` for diffusers' timestep ``k`` (``latentgen.generative.schedules``), so with ``T = 1000`` the
embedding sees ``k + 1`` where diffusers' sees ``k``. A shift of the argument by ``delta`` is a rotation of each
``(cos, sin)`` pair of the sinusoidal features by the angle ``delta * w_i``::

    cos((k + d) w) = cos(k w) cos(d w) - sin(k w) sin(d w),   sin((k + d) w) = sin(k w) cos(d w) + cos(k w) sin(d w)

a fixed linear map, folded into the first layer of the time MLP (``time_embedding.linear_1``): the exported UNet
called with ``k`` computes exactly what latentgen's computes at ``t = (k + 1) / T``. Flow matching evaluates at
``t = sigma`` and diffusers' flow schedulers pass ``1000 sigma``: no shift (``time_shift=0``).

Everything that is not the same graph is refused with a ConfigError that names the option.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from latentgen.errors import ConfigError
from latentgen.networks.unet import UNet, UNetBlock
from latentgen.nn import AttentionBlock, ResBlock, SpatialTransformer

__all__ = ["diffusers_unet_config", "unet_from_diffusers", "unet_to_diffusers"]

_RES = {"norm1": "norm1", "conv1": "conv1", "emb_proj": "time_emb_proj", "norm2": "norm2", "conv2": "conv2",
        "skip": "conv_shortcut"}  # fmt: skip
_PLAIN = {"norm": "group_norm", "to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
_TRANSFORMER = {"norm": "norm", "proj_in": "proj_in", "proj_out": "proj_out", "blocks": "transformer_blocks"}
_TBLOCK = {"norm1": "norm1", "attn1": "attn1", "norm2": "norm2", "attn2": "attn2", "norm3": "norm3",
           "ff.0.proj": "ff.net.0.proj", "ff.2": "ff.net.2"}  # fmt: skip
_ATTN = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}


def _blocks(blocks: nn.ModuleList) -> list[UNetBlock]:
    return [b for b in blocks if isinstance(b, UNetBlock)]


def _first_res(unet: UNet) -> ResBlock:
    res = _blocks(unet.input_blocks)[0].res
    assert res is not None  # the first input block of every latentgen UNet is a ResBlock
    return res


def _levels(unet: UNet) -> tuple[list[int], set[int], int]:
    """(channels per level, levels with attention, ResBlocks per level) read from the built modules."""
    chans: list[int] = []
    attn_levels: set[int] = set()
    level = n_res = 0
    for block in _blocks(unet.input_blocks):
        if block.res is None:  # a Downsample block closes the level
            level += 1
            continue
        if len(chans) == level:
            chans.append(block.res.out_channels)
            n_res = 0
        n_res += 1
        if block.attn is not None:
            attn_levels.add(level)
    return chans, attn_levels, n_res


def _head_dims(unet: UNet) -> list[tuple[int, int]]:
    """(heads, dim_head) of every attention module, encoder to decoder."""
    out: list[tuple[int, int]] = []
    for m in unet.modules():
        if isinstance(m, AttentionBlock):
            out.append((m.heads, m.dim_head))
        elif isinstance(m, SpatialTransformer):
            a: Any = m.blocks[0]
            out.append((int(a.attn1.heads), int(a.attn1.dim_head)))
    return out


def _check_mappable(unet: UNet) -> int:
    """Refuse what diffusers' UNets cannot hold; returns the common number of GroupNorm groups."""
    for m in unet.modules():
        if isinstance(m, ResBlock) and (m.up or m.down):
            raise ConfigError(
                "export: denoiser.resblock_updown=true (ResBlock resampling) has no diffusers UNet2DModel / "
                "UNet2DConditionModel equivalent with strided-conv downsampling; retrain with resblock_updown=false"
            )
        if isinstance(m, nn.Conv2d) and m.stride == (2, 2) and m.padding != (0, 0):
            raise ConfigError("export: a downsampling convolution with symmetric padding is not LDM's layout")
    groups = {m.num_groups for m in unet.modules() if isinstance(m, nn.GroupNorm)}
    eps = {m.eps for m in unet.modules() if isinstance(m, nn.GroupNorm)}
    if len(groups) != 1 or eps != {1e-6}:
        raise ConfigError(
            f"export: the UNet's GroupNorms have {sorted(groups)} groups (latentgen uses gcd(channels, 32)); "
            "diffusers uses one norm_num_groups everywhere: make denoiser.ch a multiple of 32"
        )
    return groups.pop()


def diffusers_unet_config(unet: UNet, num_class_embeds: int | None = None) -> tuple[str, dict[str, Any]]:
    """(diffusers class name, its ``__init__`` config) of the diffusers UNet that is the same graph as ``unet``."""
    groups = _check_mappable(unet)
    chans, attn_levels, n_res = _levels(unet)
    n = len(chans)
    mid_attn = unet.middle_blocks[0].attn is not None
    heads = _head_dims(unet)
    emb_dim = unet.time_embed.mlp[0].out_features
    common: dict[str, Any] = {
        "sample_size": unet.input_size,
        "in_channels": unet.in_channels,
        "out_channels": unet.out_channels,
        "flip_sin_to_cos": True,  # latentgen's features are [cos, sin]
        "freq_shift": 0,
        "block_out_channels": chans,
        "layers_per_block": n_res,
        "downsample_padding": 0,  # F.pad(0, 1, 0, 1) then a stride-2 conv without padding (LDM)
        "mid_block_scale_factor": 1,
        "dropout": float(_first_res(unet).dropout.p),
        "act_fn": "silu",
        "norm_num_groups": groups,
        "norm_eps": 1e-6,
        "resnet_time_scale_shift": "scale_shift" if _first_res(unet).scale_shift else "default",
        "time_embedding_dim": emb_dim,
        "num_class_embeds": num_class_embeds,
    }
    if unet.attention_type == "plain":
        dims = {d for _, d in heads}
        if len(dims) > 1:
            raise ConfigError(
                f"export: plain attention with channels per head {sorted(dims)} at different levels; diffusers' "
                "UNet2DModel has one attention_head_dim: use denoiser.head_channels instead of denoiser.num_heads"
            )
        return "UNet2DModel", {
            **common,
            "down_block_types": ["AttnDownBlock2D" if i in attn_levels else "DownBlock2D" for i in range(n)],
            "up_block_types": ["AttnUpBlock2D" if i in attn_levels else "UpBlock2D" for i in reversed(range(n))],
            "mid_block_type": "UNetMidBlock2D",
            "add_attention": mid_attn,
            "attention_head_dim": dims.pop() if dims else 8,
            "attn_norm_num_groups": groups,  # diffusers drops the mid-block attention norm with scale_shift otherwise
            "downsample_type": "conv",
            "upsample_type": "conv",
            "time_embedding_type": "positional",
        }
    if unet.context_dim is None:
        raise ConfigError(
            "export: denoiser.attention_type=transformer without denoiser.context_dim (self-attention + feed-forward, "
            "no cross-attention) has no diffusers equivalent: UNet2DConditionModel always cross-attends. Train the "
            "unconditional model with denoiser=unet_plain (UNet2DModel)"
        )
    if not mid_attn:
        raise ConfigError("export: denoiser.mid_attention=false has no UNet2DConditionModel equivalent")
    depth = {len(m.blocks) for m in unet.modules() if isinstance(m, SpatialTransformer)}
    if len(depth) != 1:
        raise ConfigError(f"export: transformer depths {sorted(depth)} differ between levels")
    # diffusers' (misnamed) attention_head_dim of UNet2DConditionModel is the number of heads per level
    level_heads, it = [], iter(heads)
    for i in range(n):
        level_heads.append(next(it)[0] if i in attn_levels else 1)
        for _ in range(n_res - 1 if i in attn_levels else 0):
            next(it)
    mid_heads = heads[len(attn_levels) * n_res][0]
    if mid_heads != level_heads[-1]:
        if n - 1 in attn_levels:
            raise ConfigError("export: the middle block's heads differ from the last level's")
        level_heads[-1] = mid_heads
    return "UNet2DConditionModel", {
        **common,
        "down_block_types": ["CrossAttnDownBlock2D" if i in attn_levels else "DownBlock2D" for i in range(n)],
        "up_block_types": ["CrossAttnUpBlock2D" if i in attn_levels else "UpBlock2D" for i in reversed(range(n))],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "cross_attention_dim": unet.context_dim,
        "attention_head_dim": level_heads,
        "transformer_layers_per_block": depth.pop(),
        "use_linear_projection": False,
        "only_cross_attention": False,
        "upcast_attention": False,
    }


def _prefix_map(unet: UNet) -> dict[str, tuple[str, dict[str, str]]]:
    """latentgen module prefix -> (diffusers module prefix, suffix map of that module kind)."""
    attn_map = _PLAIN if unet.attention_type == "plain" else _TRANSFORMER
    out: dict[str, tuple[str, dict[str, str]]] = {}
    level, j = 0, 0
    for b, block in enumerate(unet.input_blocks):
        if block.res is None:
            out[f"input_blocks.{b}.resample.conv"] = (f"down_blocks.{level}.downsamplers.0.conv", {})
            level, j = level + 1, 0
            continue
        out[f"input_blocks.{b}.res"] = (f"down_blocks.{level}.resnets.{j}", _RES)
        if block.attn is not None:
            out[f"input_blocks.{b}.attn"] = (f"down_blocks.{level}.attentions.{j}", attn_map)
        j += 1
    out["middle_blocks.0.res"] = ("mid_block.resnets.0", _RES)
    out["middle_blocks.0.attn"] = ("mid_block.attentions.0", attn_map)
    out["middle_blocks.1.res"] = ("mid_block.resnets.1", _RES)
    per_level = len(unet.output_blocks) // (level + 1)
    for b in range(len(unet.output_blocks)):
        up, j = divmod(b, per_level)
        out[f"output_blocks.{b}.res"] = (f"up_blocks.{up}.resnets.{j}", _RES)
        out[f"output_blocks.{b}.attn"] = (f"up_blocks.{up}.attentions.{j}", attn_map)
        out[f"output_blocks.{b}.resample.conv"] = (f"up_blocks.{up}.upsamplers.0.conv", {})
    out["time_embed.mlp.0"] = ("time_embedding.linear_1", {})
    out["time_embed.mlp.2"] = ("time_embedding.linear_2", {})
    for name in ("conv_in", "conv_out"):
        out[name] = (name, {})
    out["norm_out"] = ("conv_norm_out", {})
    return out


def _map_suffix(suffix: str, table: dict[str, str]) -> str:
    """'blocks.0.attn1.to_out.weight' -> 'transformer_blocks.0.attn1.to_out.0.weight' (longest rule first)."""
    if table is _TRANSFORMER and suffix.startswith("blocks."):
        _, i, rest = suffix.split(".", 2)
        for src, dst in sorted(_TBLOCK.items(), key=lambda kv: -len(kv[0])):
            if rest.startswith(src + "."):
                rest = dst + rest[len(src) :]
                if dst.startswith("attn"):
                    head, tail = rest.split(".", 1)
                    rest = head + "." + _map_suffix(tail, _ATTN)
                return f"transformer_blocks.{i}.{rest}"
        raise KeyError(suffix)
    for src, dst in sorted(table.items(), key=lambda kv: -len(kv[0])):
        if suffix.startswith(src + "."):
            return dst + suffix[len(src) :]
    if not table:
        return suffix
    raise KeyError(suffix)


def _key_map(unet: UNet) -> dict[str, str]:
    """latentgen state-dict key -> diffusers key for every tensor of ``unet`` except ``vector_embed``."""
    prefixes = sorted(_prefix_map(unet).items(), key=lambda kv: -len(kv[0]))
    out = {}
    for key in unet.state_dict():
        if key.startswith("vector_embed."):
            continue
        for src, (dst, table) in prefixes:
            if key.startswith(src + "."):
                out[key] = dst + "." + _map_suffix(key[len(src) + 1 :], table)
                break
        else:
            raise KeyError(f"no diffusers name for {key}")
    return out


def _rotate_time_features(weight: torch.Tensor, freq_dim: int, shift: float) -> torch.Tensor:
    """W' with ``W' feats(k) = W feats(k + shift)`` for latentgen's ``[cos(k w), sin(k w)]`` features (float64)."""
    if shift == 0:
        return weight.clone()
    half = freq_dim // 2
    w = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)  # (half,)
    c, s = torch.cos(shift * w), torch.sin(shift * w)
    W = weight.double()
    w_cos, w_sin = W[:, :half], W[:, half : 2 * half]
    out = W.clone()
    out[:, :half] = w_cos * c + w_sin * s  # coefficient of cos(k w)
    out[:, half : 2 * half] = w_sin * c - w_cos * s  # coefficient of sin(k w)
    return out.to(weight.dtype)


def unet_to_diffusers(unet: UNet, *, time_shift: float, class_table: torch.Tensor | None = None) -> Any:
    """The diffusers UNet (in eval mode, float32) that computes ``unet`` with diffusers' time convention.

    Args:
        unet: a latentgen UNet (plain attention without context, or transformer attention with context).
        time_shift: index units added to diffusers' timestep before latentgen's embedding: 1 for a discrete
            schedule with T = 1000 (``t = (k + 1) / T``), 0 for flow matching (``t = sigma``).
        class_table: (num_classes + 1, D) the class conditioner's embedding table when ``cond.vector`` is a class
            embedding (``unet.vector_dim = D``); it becomes ``class_embedding`` (``class_labels`` in diffusers).
    """
    import diffusers  # optional dependency (the [diffusers] extra)

    if (class_table is None) != (unet.vector_embed is None):
        raise ConfigError(
            "export: denoiser.vector_dim is set but the vector is not a class embedding (or the reverse); only "
            "conditioner=class_vector maps to diffusers' class embeddings"
        )
    num_class_embeds = None if class_table is None else int(class_table.shape[0])
    cls_name, config = diffusers_unet_config(unet, num_class_embeds)
    model = getattr(diffusers, cls_name)(**config)
    src = {k: v.detach().float().cpu() for k, v in unet.state_dict().items()}
    state = {dst: src[k] for k, dst in _key_map(unet).items()}
    state["time_embedding.linear_1.weight"] = _rotate_time_features(
        src["time_embed.mlp.0.weight"], unet.time_embed.freq_dim, time_shift
    )
    if class_table is not None:
        with torch.no_grad():
            table = class_table.detach().double().cpu()
            state["class_embedding.weight"] = (
                table @ src["vector_embed.weight"].double().T + src["vector_embed.bias"].double()
            ).float()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"export: diffusers {cls_name} does not match (missing {missing}, unexpected {unexpected})")
    return model.eval()


def unet_from_diffusers(model: nn.Module, *, time_shift: float) -> UNet:
    """The latentgen UNet of a diffusers ``UNet2DModel`` (plain attention) or ``UNet2DConditionModel`` whose config
    latentgen can build (the inverse of :func:`unet_to_diffusers`; class embeddings are not imported)."""
    cfg: Any = model.config
    if getattr(cfg, "num_class_embeds", None) or getattr(cfg, "class_embed_type", None):
        raise ConfigError("import: diffusers UNets with class embeddings are not imported")
    chans = list(cfg.block_out_channels)
    if any(c != chans[0] * (c // chans[0]) for c in chans):
        raise ConfigError(f"import: block_out_channels {chans} are not multiples of the first")
    plain = type(model).__name__ == "UNet2DModel"
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    attn_sizes = [size // 2**i for i, t in enumerate(cfg.down_block_types) if t.startswith(("Attn", "CrossAttn"))]
    kw: dict[str, Any] = {}
    if plain:
        kw = {"attention_type": "plain", "head_channels": cfg.attention_head_dim, "mid_attention": cfg.add_attention}
    else:
        heads = cfg.attention_head_dim if not isinstance(cfg.attention_head_dim, int) else [cfg.attention_head_dim]
        kw = {"num_heads": heads[-1], "head_channels": None, "context_dim": cfg.cross_attention_dim,
              "transformer_depth": cfg.transformer_layers_per_block}  # fmt: skip
    unet = UNet(
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        ch=chans[0],
        ch_mult=[c // chans[0] for c in chans],
        num_res_blocks=cfg.layers_per_block,
        input_size=size,
        attention_resolutions=attn_sizes,
        scale_shift_norm=cfg.resnet_time_scale_shift == "scale_shift",
        time_embed_dim=cfg.time_embedding_dim,
        dropout=cfg.dropout,
        **kw,
    )
    cls_name, expected = diffusers_unet_config(unet)
    for key, value in expected.items():
        got = getattr(cfg, key, None)
        got = list(got) if isinstance(got, (tuple, list)) else got
        if key not in ("num_class_embeds", "sample_size", "dropout") and got != value:
            raise ConfigError(f"import: diffusers config {key}={got!r}; latentgen's UNet needs {value!r}")
    src = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    state = {k: src[dst] for k, dst in _key_map(unet).items()}
    state["time_embed.mlp.0.weight"] = _rotate_time_features(
        src["time_embedding.linear_1.weight"], unet.time_embed.freq_dim, -time_shift
    )
    unet.load_state_dict(state)
    return unet.eval()
