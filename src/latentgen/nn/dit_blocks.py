"""The layers of a diffusion transformer (DiT, Peebles & Xie 2023; PixArt-alpha, Chen et al. 2024).

- :func:`sincos_pos_embed_2d`: the fixed 2-D sin-cos position embedding (MAE / DiT).
- :class:`PatchEmbed` and :func:`unpatchify`: (B, C, H, W) <-> (B, N, D) tokens of p x p patches.
- :class:`DiTTimestepEmbedder`: t in [0, 1] -> sinusoidal features of ``1000 t`` -> 2-layer MLP.
- :class:`QKVAttention`: multi-head SDPA attention with biased projections and optional QK-norm.
- :class:`DiTBlock`: adaLN-Zero block (DiT Fig. 3), optionally with cross-attention after self-attention.
- :class:`FinalLayer`: adaLN (shift, scale) + zero-initialised linear to the p*p*C_out patch values.

:class:`latentgen.nn.Attention` has bias-free q/k/v projections (LDM's); DiT's have biases and may carry
QK-norm, hence :class:`QKVAttention` here. The cross-attention reuses :class:`latentgen.nn.Attention`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from latentgen.nn.attention import Attention


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x * (1 + scale) + shift`` with per-sample (B, D) shift/scale broadcast over the N tokens."""
    return x * (1 + scale[:, None]) + shift[:, None]  # (B, N, D)


def sincos_pos_embed_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim): ``[sin(pos w_i), cos(pos w_i)]``, ``w_i = 10000^(-i / (dim/2))``."""
    if dim % 2:
        raise ValueError(f"sin-cos position embedding needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))  # (dim/2,)
    args = pos.double()[:, None] * omega[None]  # (M, dim/2)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (M, dim)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """The fixed 2-D sin-cos position embedding of a (grid_h x grid_w) token grid, (grid_h * grid_w, dim) float32.

    Token ``n = i * grid_w + j`` (row i, column j, the order of :class:`PatchEmbed`); the first half of the
    channels encodes the column j, the second half the row i (as MAE and DiT do).
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embedding needs a width divisible by 4, got {dim}")
    rows = torch.arange(grid_h).repeat_interleave(grid_w)  # (N,) i of token n
    cols = torch.arange(grid_w).repeat(grid_h)  # (N,) j of token n
    emb = torch.cat([sincos_pos_embed_1d(dim // 2, cols), sincos_pos_embed_1d(dim // 2, rows)], dim=1)  # (N, dim)
    return emb.float()


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> linear tokens: a Conv2d of kernel = stride = p, flattened row-major."""

    def __init__(self, in_channels: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, H/p, W/p) -> (B, N, D)


def unpatchify(tokens: torch.Tensor, channels: int, patch_size: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """(B, N, p*p*C) tokens, each ordered (p_row, p_col, C) -> (B, C, grid_h * p, grid_w * p) image."""
    b, p = tokens.shape[0], patch_size
    x = tokens.reshape(b, grid_h, grid_w, p, p, channels)  # (B, h, w, p, p, C)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, p)
    return x.reshape(b, channels, grid_h * p, grid_w * p)  # (B, C, H, W)


class DiTTimestepEmbedder(nn.Module):
    """t in [0, 1] -> ``[cos(1000 t w_i), sin(1000 t w_i)]`` -> Linear, SiLU, Linear (DiT's t_embedder).

    ``w_i = max_period^(-i / (half - freq_shift))``: DiT uses ``freq_shift=0``; diffusers' DiT port uses 1
    (its ``downscale_freq_shift``), so a model imported from diffusers keeps that.
    """

    def __init__(self, dim: int, freq_dim: int = 256, time_scale: float = 1000.0, freq_shift: float = 0.0) -> None:
        super().__init__()
        self.freq_dim, self.time_scale, self.freq_shift = freq_dim, time_scale, freq_shift
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        # -log(P) * i / (half - shift), in this order of operations (DiT's and diffusers'): at t * 1000 ~ 1000 a
        # rounding difference of the frequencies shows up at 1e-4 in the output.
        exponent = (
            -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - self.freq_shift)
        )
        freqs = torch.exp(exponent)  # (half,)
        args = (t.float() * self.time_scale)[:, None] * freqs[None]  # (B, half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2*half)
        if self.freq_dim % 2:
            emb = F.pad(emb, (0, 1))  # (B, freq_dim)
        return self.mlp(emb.to(next(self.mlp.parameters()).dtype))  # (B, dim)


class QKVAttention(nn.Module):
    """Multi-head self-attention with biased q/k/v/out projections (ViT / DiT) through SDPA.

    ``qk_norm=True`` normalises queries and keys per head with a LayerNorm before the dot product (as in
    ViT-22B, SD3), which bounds the attention logits under bf16 and large learning rates.
    """

    def __init__(self, dim: int, heads: int, qk_norm: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by {heads} heads")
        self.heads, self.dim_head = heads, dim // heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.Linear(dim, dim)
        self.norm_q = nn.LayerNorm(self.dim_head, eps=1e-6) if qk_norm else nn.Identity()
        self.norm_k = nn.LayerNorm(self.dim_head, eps=1e-6) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.to_q(x).view(b, n, self.heads, self.dim_head).transpose(1, 2)  # (B, h, N, d)
        k = self.to_k(x).view(b, n, self.heads, self.dim_head).transpose(1, 2)  # (B, h, N, d)
        v = self.to_v(x).view(b, n, self.heads, self.dim_head).transpose(1, 2)  # (B, h, N, d)
        out = F.scaled_dot_product_attention(self.norm_q(q), self.norm_k(k), v)  # (B, h, N, d)
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))  # (B, N, D)


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block (DiT §3.2, Fig. 3), with PixArt-alpha's cross-attention when ``context_dim``.

    From the conditioning vector c (B, D): ``(shift1, scale1, gate1, shift2, scale2, gate2) = Linear(SiLU(c))``,
    zero-initialised so that every block starts as the identity, then::

        x = x + gate1 * SelfAttn(LN(x) * (1 + scale1) + shift1)
        x = x + CrossAttn(x, context)                          (context_dim set; zero-initialised output)
        x = x + gate2 * MLP(LN(x) * (1 + scale2) + shift2)     (MLP: Linear, GELU(tanh), Linear)
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        context_dim: int | None = None,
        qk_norm: bool = False,
        dropout: float = 0.0,
        mlp_norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = QKVAttention(dim, heads, qk_norm=qk_norm)
        self.cross_attn = (
            Attention(dim, context_dim, heads=heads, dim_head=dim // heads) if context_dim is not None else None
        )
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=mlp_norm_eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)  # 6 x (B, D)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))  # (B, N, D)
        if self.cross_attn is not None and context is not None:
            x = x + self.cross_attn(x, context.to(x.dtype), context_mask)  # (B, N, D)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))  # (B, N, D)


class FinalLayer(nn.Module):
    """adaLN (shift, scale) from c, then a linear map of each token to its p*p*C_out patch values (DiT §3.2)."""

    def __init__(self, dim: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # 2 x (B, D)
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, N, p*p*C_out)
