"""Timestep embeddings.

Time convention (see ``latentgen.generative.schedules``): the denoiser receives a continuous
``t`` in [0, 1] (t=0 data, t=1 noise). The sinusoidal embedding multiplies by ``time_scale``
(1000 by default) so that discrete-time DDPM (t = k/T) and continuous-time flows see the same
frequencies as the usual integer-timestep embedding.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in "Attention is all you need".

    Args:
        t: (B,) timesteps (any real values).
        dim: embedding width.
    Returns:
        (B, dim) float32 embedding: [cos(t * w_i), sin(t * w_i)], w_i = max_period^(-i/half).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2*half)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)  # (B, dim)
    return emb


class TimestepEmbedder(nn.Module):
    """t in [0, 1] -> sinusoidal features of ``t * time_scale`` -> 2-layer MLP (SiLU)."""

    def __init__(self, freq_dim: int, embed_dim: int, time_scale: float = 1000.0) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.time_scale = time_scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freqs = timestep_embedding(t * self.time_scale, self.freq_dim)  # (B, freq_dim)
        return self.mlp(freqs.to(self.mlp[0].weight.dtype))  # (B, embed_dim)
