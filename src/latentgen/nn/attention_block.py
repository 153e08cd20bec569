"""ADM / LDM "plain" attention block for feature maps: GroupNorm, multi-head self-attention, residual.

This is the attention of the unconditional LDM and ADM UNets (Dhariwal & Nichol 2021, App. A), without the
feed-forward and the cross-attention of :class:`~latentgen.nn.SpatialTransformer`: about 1/5 of the work of a
transformer block at the same width. The q/k/v and output projections are linear layers with biases over the
``H*W`` tokens (equal to ADM's 1x1 convolutions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from latentgen.nn.norms import group_norm


class AttentionBlock(nn.Module):
    """``x + out(attn(q, k, v))`` with ``q, k, v`` linear maps of ``GroupNorm(x)`` over all ``H*W`` positions.

    Args:
        channels: feature channels C (= heads * dim_head).
        heads: number of attention heads.
        dim_head: channels per head.

    The output projection is zero-initialized, so a fresh block is the identity. ``context`` and
    ``context_mask`` are accepted for the UNet's common block signature and must be None (no cross-attention).
    """

    def __init__(self, channels: int, heads: int, dim_head: int) -> None:
        super().__init__()
        if heads * dim_head != channels:
            raise ValueError(f"AttentionBlock: heads * dim_head = {heads * dim_head} != channels = {channels}")
        self.heads, self.dim_head = heads, dim_head
        self.norm = group_norm(channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if context is not None:
            raise ValueError("AttentionBlock has no cross-attention: use a SpatialTransformer for cond.context")
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        n = tokens.shape[1]
        q = self.to_q(tokens).view(b, n, self.heads, self.dim_head).transpose(1, 2)  # (B, h, N, d)
        k = self.to_k(tokens).view(b, n, self.heads, self.dim_head).transpose(1, 2)  # (B, h, N, d)
        v = self.to_v(tokens).view(b, n, self.heads, self.dim_head).transpose(1, 2)  # (B, h, N, d)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d); softmax(q k^T / sqrt(d)) v
        out = self.to_out(out.transpose(1, 2).reshape(b, n, c))  # (B, N, C)
        return x + out.transpose(1, 2).reshape(b, c, h, w)  # (B, C, H, W)
