"""Residual blocks and resampling layers shared by the autoencoders and the UNet denoiser."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from latentgen.nn.norms import group_norm


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv x2 with a skip connection, optionally conditioned on an embedding.

    With ``emb_dim`` set, the embedding modulates the second normalization. ``scale_shift=True`` is
    ADM's "scale-shift norm": ``h = norm(h) * (1 + scale) + shift``; otherwise the projected
    embedding is added to the features (DDPM/LDM autoencoder style).
    The last convolution is zero-initialized when conditioned, so a fresh block is the identity.

    ``up`` / ``down`` make it ADM's resampling residual block ("BigGAN up/down"): the features are
    resampled after the first norm+SiLU and the skip is resampled too (nearest 2x up, 2x2 average
    pooling down); the block then maps (B, C_in, H, W) -> (B, C_out, 2H, 2W) or (B, C_out, H/2, W/2).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        emb_dim: int | None = None,
        dropout: float = 0.0,
        scale_shift: bool = True,
        norm_groups: int = 32,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        if up and down:
            raise ValueError("ResBlock: up and down are mutually exclusive")
        self.up, self.down = up, down
        out_channels = out_channels or in_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.scale_shift = scale_shift
        self.norm1 = group_norm(in_channels, norm_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = None
        if emb_dim is not None:
            self.emb_proj = nn.Linear(emb_dim, out_channels * (2 if scale_shift else 1))
        self.norm2 = group_norm(out_channels, norm_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if emb_dim is not None:
            nn.init.zeros_(self.conv2.weight)
            nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C, 2H, 2W)
        if self.down:
            return F.avg_pool2d(x, 2)  # (B, C, H/2, W/2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = F.silu(self.norm1(x))  # (B, C_in, H, W)
        if self.up or self.down:
            h, x = self._resample(h), self._resample(x)  # (B, C_in, H', W') both
        h = self.conv1(h)  # (B, C_out, H', W')
        if self.emb_proj is not None:
            if emb is None:
                raise ValueError("ResBlock was built with emb_dim but called without an embedding")
            e = self.emb_proj(F.silu(emb))[:, :, None, None].to(h.dtype)  # (B, C_out or 2*C_out, 1, 1)
            if self.scale_shift:
                scale, shift = e.chunk(2, dim=1)  # (B, C_out, 1, 1) each
                h = torch.addcmul(shift, self.norm2(h), 1 + scale)  # norm(h) * (1 + scale) + shift
            else:
                h = self.norm2(h + e)
        else:
            h = self.norm2(h)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Halve H and W: a stride-2 3x3 conv (with asymmetric padding, as in LDM) or 2x2 average pooling."""

    def __init__(self, channels: int, with_conv: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is None:
            return F.avg_pool2d(x, 2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling followed by an optional 3x3 conv."""

    def __init__(self, channels: int, with_conv: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C, 2H, 2W)
        return x if self.conv is None else self.conv(x)
