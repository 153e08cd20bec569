"""latentgen's :class:`~latentgen.networks.DiT` <-> diffusers' ``DiTTransformer2DModel``: the weight mapping.

diffusers' DiT is class-conditional only and stores the time and class embedders in every block
(``transformer_blocks.{i}.norm1.emb``; its own forward takes block 0's for the final layer, and converted
DiT checkpoints hold the same weights in every block). latentgen keeps one time embedder in the DiT and the
class table (num_classes + 1 rows, the last the CFG null class) in the class conditioner
(``conditioner=class_vector``, ``as_context=false``, ``embed_dim = hidden_size``) with
``denoiser.vector_projection=false``. Therefore:

- :func:`dit_state_from_diffusers` reads block 0's embedders (and refuses a model whose blocks differ);
- :func:`dit_state_to_diffusers` writes the same embedders into every block.

diffusers' port differs from DiT in two constants, which :func:`dit_kwargs_from_diffusers_config` sets:
the sinusoidal time frequencies ``10000^(-i/(half-1))`` (``time_freq_shift=1``) and the epsilon of the
LayerNorm before the MLP (its ``norm_eps``).

Keys (latentgen <- diffusers)::

    x_embedder.proj.{weight,bias}               <- pos_embed.proj.{weight,bias}
    t_embedder.mlp.{0,2}.{weight,bias}          <- transformer_blocks.0.norm1.emb.timestep_embedder.linear_{1,2}.*
    (conditioner) embedding.weight              <- transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight
    blocks.{i}.adaLN_modulation.1.*             <- transformer_blocks.{i}.norm1.linear.*
    blocks.{i}.attn.to_{q,k,v}.*                <- transformer_blocks.{i}.attn1.to_{q,k,v}.*
    blocks.{i}.attn.to_out.*                    <- transformer_blocks.{i}.attn1.to_out.0.*
    blocks.{i}.mlp.{0,3}.*                      <- transformer_blocks.{i}.ff.net.{0.proj,2}.*
    final_layer.adaLN_modulation.1.*            <- proj_out_1.*
    final_layer.linear.*                        <- proj_out_2.*
"""

from __future__ import annotations

from typing import Any

import torch

from latentgen.errors import ConfigError
from latentgen.networks.dit import DiT

_EMB = "transformer_blocks.{i}.norm1.emb."
_CLASS_TABLE = "class_embedder.embedding_table.weight"

_BLOCK_KEYS = {  # latentgen (under blocks.{i}.) -> diffusers (under transformer_blocks.{i}.)
    "adaLN_modulation.1": "norm1.linear",
    "attn.to_q": "attn1.to_q",
    "attn.to_k": "attn1.to_k",
    "attn.to_v": "attn1.to_v",
    "attn.to_out": "attn1.to_out.0",
    "mlp.0": "ff.net.0.proj",
    "mlp.3": "ff.net.2",
}
_TOP_KEYS = {
    "x_embedder.proj": "pos_embed.proj",
    "t_embedder.mlp.0": "timestep_embedder.linear_1",  # under transformer_blocks.{i}.norm1.emb.
    "t_embedder.mlp.2": "timestep_embedder.linear_2",
    "final_layer.adaLN_modulation.1": "proj_out_1",
    "final_layer.linear": "proj_out_2",
}


def dit_kwargs_from_diffusers_config(config: dict[str, Any]) -> dict[str, Any]:
    """The :class:`~latentgen.networks.DiT` keyword arguments equal to a diffusers DiT config (a dict)."""
    if config.get("norm_type", "ada_norm_zero") != "ada_norm_zero" or not config.get("attention_bias", True):
        raise ConfigError("only diffusers DiTs with norm_type='ada_norm_zero' and attention_bias=True map to DiT")
    if config.get("activation_fn", "gelu-approximate") != "gelu-approximate":
        raise ConfigError(f"diffusers DiT activation_fn={config['activation_fn']!r}: DiT uses 'gelu-approximate'")
    heads, head_dim = int(config["num_attention_heads"]), int(config["attention_head_dim"])
    in_channels = int(config["in_channels"])
    return {
        "in_channels": in_channels,
        "out_channels": int(config.get("out_channels") or in_channels),
        "input_size": int(config["sample_size"]),
        "patch_size": int(config["patch_size"]),
        "hidden_size": heads * head_dim,
        "depth": int(config["num_layers"]),
        "num_heads": heads,
        "vector_dim": heads * head_dim,
        "vector_projection": False,
        "time_freq_shift": 1.0,
        "mlp_norm_eps": float(config.get("norm_eps", 1e-5)),
    }


def dit_state_from_diffusers(
    state: dict[str, torch.Tensor], depth: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A diffusers DiT state dict -> (latentgen DiT state dict, class table (num_classes + 1, D))."""
    emb0 = _EMB.format(i=0)
    for i in range(1, depth):
        for name in ("timestep_embedder.linear_1.weight", "timestep_embedder.linear_2.weight", _CLASS_TABLE):
            if not torch.equal(state[_EMB.format(i=i) + name], state[emb0 + name]):
                raise ConfigError(
                    f"diffusers DiT block {i} has its own {name} (differs from block 0): latentgen's DiT shares one "
                    "time and class embedding across blocks"
                )
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in _TOP_KEYS.items():
        prefix = emb0 if ours.startswith("t_embedder") else ""
        for p in ("weight", "bias"):
            out[f"{ours}.{p}"] = state[f"{prefix}{theirs}.{p}"]
    for i in range(depth):
        for ours, theirs in _BLOCK_KEYS.items():
            for p in ("weight", "bias"):
                out[f"blocks.{i}.{ours}.{p}"] = state[f"transformer_blocks.{i}.{theirs}.{p}"]
    return out, state[emb0 + _CLASS_TABLE]


def dit_state_to_diffusers(
    state: dict[str, torch.Tensor], class_table: torch.Tensor, depth: int
) -> dict[str, torch.Tensor]:
    """The inverse of :func:`dit_state_from_diffusers` (the position-embedding buffer is left to diffusers)."""
    extra = sorted(k for k in state if k.startswith(("vector_embed.", "pos_embed")) or ".cross_attn." in k)
    extra += [k for k in state if ".norm_q." in k or ".norm_k." in k]
    if extra:
        raise ConfigError(
            f"this DiT has parameters diffusers' DiT does not ({extra[:3]}...): only class-conditional DiTs with "
            "vector_projection=false, no cross-attention and no QK-norm export to DiTTransformer2DModel"
        )
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in _TOP_KEYS.items():
        for p in ("weight", "bias"):
            if ours.startswith("t_embedder"):
                for i in range(depth):
                    out[f"{_EMB.format(i=i)}{theirs}.{p}"] = state[f"{ours}.{p}"]
            else:
                out[f"{theirs}.{p}"] = state[f"{ours}.{p}"]
    for i in range(depth):
        out[_EMB.format(i=i) + _CLASS_TABLE] = class_table
        for ours, theirs in _BLOCK_KEYS.items():
            for p in ("weight", "bias"):
                out[f"transformer_blocks.{i}.{theirs}.{p}"] = state[f"blocks.{i}.{ours}.{p}"]
    return out


def dit_from_diffusers(model: Any) -> tuple[DiT, torch.Tensor]:
    """A diffusers ``DiTTransformer2DModel`` -> (latentgen DiT with its weights, class table for the conditioner)."""
    kwargs = dit_kwargs_from_diffusers_config(dict(model.config))
    dit = DiT(**kwargs)
    state, table = dit_state_from_diffusers(model.state_dict(), kwargs["depth"])
    dit.load_state_dict(state, strict=True)
    return dit, table


def dit_to_diffusers(dit: DiT, class_table: torch.Tensor) -> Any:
    """A latentgen DiT (+ the class conditioner's table) -> a diffusers ``DiTTransformer2DModel`` (fp32)."""
    from diffusers import DiTTransformer2DModel

    if dit.vector_dim != dit.hidden_size or not isinstance(dit.vector_embed, torch.nn.Identity):
        raise ConfigError("only a DiT with vector_dim = hidden_size and vector_projection=false exports to diffusers")
    if dit.t_embedder.freq_shift != 1.0:
        raise ConfigError(
            "diffusers' DiT computes its time frequencies with a shift of 1 (time_freq_shift=1); this DiT uses "
            f"{dit.t_embedder.freq_shift}: the exported model would not compute the same function"
        )
    heads = dit.num_heads
    model: Any = DiTTransformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=dit.hidden_size // heads,
        in_channels=dit.in_channels,
        out_channels=dit.out_channels,
        num_layers=len(dit.blocks),
        sample_size=dit.input_size,
        patch_size=dit.patch_size,
        num_embeds_ada_norm=class_table.shape[0] - 1,
        norm_eps=dit.mlp_norm_eps,
    )
    state = dit_state_to_diffusers(dit.state_dict(), class_table, len(dit.blocks))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "pos_embed.pos_embed"]
    if missing or unexpected:
        raise ConfigError(f"diffusers DiT state mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model
