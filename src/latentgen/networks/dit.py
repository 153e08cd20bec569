"""The diffusion transformer denoiser (DiT, Peebles & Xie 2023), with PixArt-alpha's cross-attention for text.

Layout (S = ``input_size``, p = ``patch_size``, N = (S/p)^2 tokens, D = ``hidden_size``)::

    x (B, C_in, S, S) --PatchEmbed--> (B, N, D) + fixed 2-D sin-cos position embedding
    c = TimestepEmbedder(t) [+ Linear(cond.vector) or cond.vector]            (B, D)
    depth x DiTBlock(tokens, c, cond.context)            adaLN-Zero [+ cross-attention]
    FinalLayer(tokens, c) --unpatchify--> (B, C_out, S, S)

The class conditioner's vector (``conditioner=class_vector``: a learned embedding per class plus the CFG
null class) is the class embedding of DiT; with ``vector_projection=false`` and the conditioner's
``embed_dim`` equal to ``hidden_size`` it is added to the timestep embedding as is, exactly as in DiT.
The sizes of the paper (Table 1): S (D=384, 12 blocks, 6 heads), B (768, 12, 12), L (1024, 24, 16),
XL (1152, 28, 16); conf/denoiser/dit_*.yaml.

SiT (Ma et al. 2024) is this network trained with ``objective=rectified_flow``: no separate class.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from latentgen.conditioning import Conditioning
from latentgen.errors import ConfigError
from latentgen.networks.conditioning_checks import check_context_and_vector, check_input_channels
from latentgen.nn.dit_blocks import (
    DiTBlock,
    DiTTimestepEmbedder,
    FinalLayer,
    PatchEmbed,
    sincos_pos_embed_2d,
    unpatchify,
)


def _zero(layer: nn.Module) -> None:
    assert isinstance(layer, nn.Linear)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)


def _normal(layer: nn.Module) -> None:
    assert isinstance(layer, nn.Linear)
    nn.init.normal_(layer.weight, std=0.02)


class DiT(nn.Module):
    """Diffusion transformer: ``forward(x_t, t, cond) -> (B, out_channels, S, S)``.

    Args:
        in_channels: input channels = latent channels + ``cond.concat`` channels.
        out_channels: output channels (2x the latent channels when the objective learns the variance).
        input_size: spatial size S of ``x_t`` (latent resolution); divisible by ``patch_size``.
        patch_size: p; the sequence has (S/p)^2 tokens (DiT's p = 2, 4, 8; p = 1 at small latents).
        hidden_size: token width D.
        depth: number of DiT blocks.
        num_heads: attention heads (D must be divisible by it).
        mlp_ratio: hidden width of the MLP relative to D.
        context_dim: width of ``cond.context`` tokens; adds a cross-attention after each self-attention.
        vector_dim: width of ``cond.vector`` (class embedding or pooled condition) added to the time embedding.
        vector_projection: map the vector with ``Linear(vector_dim, D)`` (default), or add it as is (then
            ``vector_dim`` must equal ``hidden_size``: DiT's own class embedding).
        qk_norm: LayerNorm on queries and keys per head.
        dropout: dropout in the MLPs.
        gradient_checkpointing: recompute every block in the backward pass (non-reentrant) while training.
        time_freq_dim: width of the sinusoidal time features (DiT: 256).
        time_freq_shift: 0 as DiT; 1 as diffusers' port (see :class:`~latentgen.nn.dit_blocks.DiTTimestepEmbedder`).
        mlp_norm_eps: epsilon of the LayerNorm before the MLP (DiT: 1e-6; diffusers' port: its ``norm_eps``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        input_size: int,
        patch_size: int = 2,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        context_dim: int | None = None,
        vector_dim: int | None = None,
        vector_projection: bool = True,
        qk_norm: bool = False,
        dropout: float = 0.0,
        gradient_checkpointing: bool = False,
        time_freq_dim: int = 256,
        time_freq_shift: float = 0.0,
        mlp_norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if patch_size < 1 or input_size % patch_size:
            raise ConfigError(
                f"denoiser.patch_size={patch_size} does not divide the latent size input_size={input_size}: "
                "choose a patch size that divides data.resolution / autoencoder.downsample_factor"
            )
        if hidden_size % num_heads:
            raise ConfigError(f"denoiser.hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
        if hidden_size % 4:
            raise ConfigError(f"denoiser.hidden_size={hidden_size} must be divisible by 4 (2-D sin-cos positions)")
        if vector_dim is not None and not vector_projection and vector_dim != hidden_size:
            raise ConfigError(
                f"denoiser.vector_projection=false adds cond.vector to the time embedding as is, but "
                f"vector_dim={vector_dim} != hidden_size={hidden_size}: set conditioner.embed_dim to "
                f"{hidden_size} or denoiser.vector_projection=true"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.input_size, self.patch_size = input_size, patch_size
        self.hidden_size, self.num_heads, self.mlp_norm_eps = hidden_size, num_heads, mlp_norm_eps
        self.context_dim, self.vector_dim = context_dim, vector_dim
        self.gradient_checkpointing = gradient_checkpointing
        self.grid = input_size // patch_size

        self.x_embedder = PatchEmbed(in_channels, hidden_size, patch_size)
        # Fixed, not learned; not saved (it is a function of the grid).
        self.register_buffer(
            "pos_embed", sincos_pos_embed_2d(hidden_size, self.grid, self.grid)[None], persistent=False
        )
        self.t_embedder = DiTTimestepEmbedder(hidden_size, time_freq_dim, freq_shift=time_freq_shift)
        self.vector_embed: nn.Module | None = None
        if vector_dim is not None:
            self.vector_embed = nn.Linear(vector_dim, hidden_size) if vector_projection else nn.Identity()
        self.blocks = nn.ModuleList(
            [
                DiTBlock(hidden_size, num_heads, mlp_ratio, context_dim, qk_norm, dropout, mlp_norm_eps)
                for _ in range(depth)
            ]
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation: Xavier-uniform linears, N(0, 0.02) time MLP, adaLN-Zero, zero final linear."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a Linear on the flattened patch
        nn.init.zeros_(self.x_embedder.proj.bias)  # type: ignore[arg-type]  # Conv2d(bias=True)
        _normal(self.t_embedder.mlp[0])
        _normal(self.t_embedder.mlp[2])
        if isinstance(self.vector_embed, nn.Linear):
            _normal(self.vector_embed)
        for block in self.blocks:
            assert isinstance(block, DiTBlock)
            _zero(block.adaLN_modulation[-1])  # adaLN-Zero: every block starts as the identity
            if block.cross_attn is not None:  # PixArt-alpha: the cross-attention starts as zero too
                _zero(block.cross_attn.to_out)
        _zero(self.final_layer.adaLN_modulation[-1])
        _zero(self.final_layer.linear)  # the network starts as the zero function

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        """x_t: (B, C_lat, S, S); t: (B,) or () float in [0, 1]; cond: optional Conditioning.

        Returns (B, out_channels, S, S) in the dtype of ``x_t``.
        """
        context = context_mask = vector = concat = None
        if cond is not None:
            context, context_mask, vector, concat = cond.context, cond.context_mask, cond.vector, cond.concat
        x = x_t if concat is None else torch.cat([x_t, concat.to(x_t.dtype)], dim=1)  # (B, C_lat + C_c, S, S)
        self._check_inputs(x, x_t, concat, context, vector)
        if t.ndim == 0:
            t = t.expand(x.shape[0])  # (B,)

        tokens = self.x_embedder(x) + self.pos_embed  # (B, N, D)
        c = self.t_embedder(t)  # (B, D)
        if self.vector_embed is not None and vector is not None:  # both or neither (_check_inputs)
            c = c + self.vector_embed(vector.to(c.dtype))  # (B, D)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, c, context, context_mask, use_reentrant=False)
            else:
                tokens = block(tokens, c, context, context_mask)  # (B, N, D)
        out = self.final_layer(tokens, c)  # (B, N, p*p*C_out)
        out = unpatchify(out, self.out_channels, self.patch_size, self.grid, self.grid)  # (B, C_out, S, S)
        return out.to(x_t.dtype)

    def _check_inputs(
        self,
        x: torch.Tensor,
        x_t: torch.Tensor,
        concat: torch.Tensor | None,
        context: torch.Tensor | None,
        vector: torch.Tensor | None,
    ) -> None:
        """Shape/presence checks; they depend only on shapes and None-ness (no graph breaks under compile)."""
        check_input_channels(x, x_t, concat, self.in_channels)
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ConfigError(
                f"the DiT was built for {self.input_size}x{self.input_size} latents (denoiser.input_size) but got "
                f"{tuple(x.shape[-2:])}: its position embedding is fixed to the token grid"
            )
        check_context_and_vector(context, vector, context_dim=self.context_dim, vector_dim=self.vector_dim)
