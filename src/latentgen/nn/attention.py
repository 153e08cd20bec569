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

    Projections are fused: a self-attention module (``context_dim=None``) holds one ``to_qkv`` Linear
    (query_dim -> 3 * inner), a cross-attention module ``to_q`` and a ``to_kv`` Linear
    (context_dim -> 2 * inner), so each call runs one or two matmuls instead of three. State dicts with
    separate ``to_q`` / ``to_k`` / ``to_v`` weights (older checkpoints, diffusers-style key maps) still load:
    they are concatenated on load.
    """

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 4, dim_head: int = 32) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head, self.inner = heads, dim_head, inner
        self.is_self_attention = context_dim is None
        if self.is_self_attention:
            self.to_qkv = nn.Linear(query_dim, 3 * inner, bias=False)
        else:
            self.to_q = nn.Linear(query_dim, inner, bias=False)
            self.to_kv = nn.Linear(context_dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, query_dim)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        """Accept separate to_q/to_k/to_v weights and fuse them into this module's layout."""
        names = [f"{prefix}to_{n}.weight" for n in "qkv"]
        if all(n in state_dict for n in names):
            q, k, v = (state_dict.pop(n) for n in names)
            if self.is_self_attention:
                state_dict[f"{prefix}to_qkv.weight"] = torch.cat([q, k, v], dim=0)  # (3*inner, Dq)
            else:
                state_dict[f"{prefix}to_q.weight"] = q
                state_dict[f"{prefix}to_kv.weight"] = torch.cat([k, v], dim=0)  # (2*inner, Dc)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, N, Dq); context: (B, M, Dc); context_mask: (B, M) bool, True = attend."""
        b, n, _ = x.shape
        h, d = self.heads, self.dim_head
        if self.is_self_attention and context is None:
            qkv = self.to_qkv(x).view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)  # (3, B, h, N, d)
            q, k, v = qkv.unbind(0)  # (B, h, N, d) each
        else:
            if self.is_self_attention:  # a self-attention module called with a context of width Dq
                w_q, w_kv = self.to_qkv.weight.split([self.inner, 2 * self.inner])
                q_flat, kv_flat = F.linear(x, w_q), F.linear(context, w_kv)  # (B, N, h*d), (B, M, 2*h*d)
            else:
                q_flat, kv_flat = self.to_q(x), self.to_kv(context)
            m = context.shape[1]
            q = q_flat.view(b, n, h, d).transpose(1, 2)  # (B, h, N, d)
            kv = kv_flat.view(b, m, 2, h, d).permute(2, 0, 3, 1, 4)  # (2, B, h, M, d)
            k, v = kv.unbind(0)  # (B, h, M, d) each
        attn_mask = None if context_mask is None else context_mask[:, None, None, :]  # (B, 1, 1, M)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, h, N, d)
        out = out.transpose(1, 2).reshape(b, n, h * d)  # (B, N, h*d)
        return self.to_out(out)


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over all H*W positions with a residual (the LDM autoencoder's AttnBlock)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.attn = Attention(channels, heads=1, dim_head=channels)

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
