"""Attention layers built on ``torch.nn.functional.scaled_dot_product_attention`` (SDPA).

SDPA picks a flash / memory-efficient kernel on GPUs and a fused kernel on CPUs, and handles
bf16 autocast. The softmax inside SDPA accumulates in fp32 on every backend we use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from latentgen.nn.norms import group_norm


class Attention(nn.Module):
    """Multi-head attention of ``x`` over ``context`` (self-attention when ``context`` is None).

    ``qkv_bias`` gives the q/k/v projections biases (diffusers' VAE attention has them; LDM's UNet does not).
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        heads: int = 4,
        dim_head: int = 32,
        qkv_bias: bool = False,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads, self.dim_head = heads, dim_head
        self.to_q = nn.Linear(query_dim, inner, bias=qkv_bias)
        self.to_k = nn.Linear(context_dim, inner, bias=qkv_bias)
        self.to_v = nn.Linear(context_dim, inner, bias=qkv_bias)
        self.to_out = nn.Linear(inner, query_dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, N, Dq); context: (B, M, Dc); context_mask: (B, M) bool, True = attend."""
        context = x if context is None else context
        b, n, _ = x.shape
        m = context.shape[1]
        q = self.to_q(x).view(b, n, self.heads, self.dim_head).transpose(1, 2)  # (B, h, N, d)
        k = self.to_k(context).view(b, m, self.heads, self.dim_head).transpose(1, 2)  # (B, h, M, d)
        v = self.to_v(context).view(b, m, self.heads, self.dim_head).transpose(1, 2)  # (B, h, M, d)
        attn_mask = None if context_mask is None else context_mask[:, None, None, :]  # (B, 1, 1, M)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, h, N, d)
        out = out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head)  # (B, N, h*d)
        return self.to_out(out)


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over all H*W positions with a residual (the LDM autoencoder's AttnBlock).

    ``norm_groups``: GroupNorm groups (reduced to a divisor of ``channels``); ``qkv_bias``: biases on q/k/v
    (LDM's 1x1 convs and diffusers' ``Attention`` have them; off by default, as latentgen always had it).
    """

    def __init__(self, channels: int, norm_groups: int = 32, qkv_bias: bool = False) -> None:
        super().__init__()
        self.norm = group_norm(channels, norm_groups)
        self.attn = Attention(channels, heads=1, dim_head=channels, qkv_bias=qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        out = self.attn(tokens).transpose(1, 2).reshape(b, c, h, w)  # (B, C, H, W)
        return x + out


class GEGLU(nn.Module):
    """Gated GELU feed-forward input projection (Shazeer 2020), as in LDM's transformer blocks."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention (when ``context_dim``), and GEGLU feed-forward."""

    def __init__(
        self, dim: int, heads: int, dim_head: int, context_dim: int | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads=heads, dim_head=dim_head)
        self.norm2 = nn.LayerNorm(dim) if context_dim is not None else None
        self.attn2 = Attention(dim, context_dim, heads=heads, dim_head=dim_head) if context_dim is not None else None
        self.norm3 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(GEGLU(dim, 4 * dim), nn.Dropout(dropout), nn.Linear(4 * dim, dim))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))  # (B, N, D)
        if self.attn2 is not None and context is not None:
            x = x + self.attn2(self.norm2(x), context, context_mask)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """LDM's transformer on feature maps: norm, 1x1 in, transformer blocks over H*W tokens, 1x1 out, residual.

    The output projection is zero-initialized, so a fresh block is the identity.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        dim_head: int,
        depth: int = 1,
        context_dim: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.norm = group_norm(channels)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.blocks = nn.ModuleList(
            [TransformerBlock(inner, heads, dim_head, context_dim, dropout) for _ in range(depth)]
        )
        self.proj_out = nn.Conv2d(inner, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, _, h, w = x.shape
        tokens = self.proj_in(self.norm(x))  # (B, D, H, W)
        d = tokens.shape[1]
        tokens = tokens.flatten(2).transpose(1, 2)  # (B, H*W, D)
        for block in self.blocks:
            tokens = block(tokens, context, context_mask)
        tokens = tokens.transpose(1, 2).reshape(b, d, h, w)  # (B, D, H, W)
        return x + self.proj_out(tokens)
