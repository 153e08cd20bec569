"""Convolutional encoder and decoder of the first stage, in the LDM / VQGAN layout.

Encoder (Esser et al. 2021, Rombach et al. 2022)::

    conv_in -> for each level i: num_res_blocks x [ResBlock (+ SpatialSelfAttention where the current
    feature-map size is in attn_resolutions)], then Downsample except at the last level
    -> mid: ResBlock, SpatialSelfAttention, ResBlock -> GroupNorm, SiLU, conv_out

Decoder: the mirror image. As in LDM (and diffusers' ``UpDecoderBlock2D``) every decoder level has
``num_res_blocks + 1`` ResBlocks, so that a config's parameter count matches the published models.

The downsampling factor is ``f = 2 ** (len(ch_mult) - 1)``; ``ch_mult`` of length 1 gives f = 1.

``IdentityEncoder`` / ``IdentityDecoder`` are the f = 1, parameter-free "autoencoder" of pixel-space
diffusion (LDM-1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from latentgen.errors import ConfigError
from latentgen.nn import Downsample, ResBlock, SpatialSelfAttention, Upsample, group_norm


def _check_common(kind: str, ch: int, ch_mult: Sequence[int], num_res_blocks: int, resolution: int) -> tuple[int, ...]:
    ch_mult = tuple(int(m) for m in ch_mult)
    if len(ch_mult) == 0 or any(m <= 0 for m in ch_mult):
        raise ConfigError(
            f"autoencoder.{kind}.ch_mult={list(ch_mult)} must be a non-empty list of positive ints; "
            "its length L sets the downsampling factor f = 2**(L-1)"
        )
    if ch <= 0 or num_res_blocks < 1:
        raise ConfigError(f"autoencoder.{kind}: ch={ch} and num_res_blocks={num_res_blocks} must both be >= 1")
    f = 2 ** (len(ch_mult) - 1)
    if resolution % f != 0:
        raise ConfigError(
            f"autoencoder.{kind}.resolution={resolution} (usually ${{data.resolution}}) is not divisible by the "
            f"downsampling factor f={f} given by ch_mult={list(ch_mult)}; use a resolution that is a multiple of {f}"
        )
    return ch_mult


class _Level(nn.Module):
    """One resolution level: ResBlocks, optional attention after each block, optional resampling."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()
        self.resample: nn.Module = nn.Identity()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[i](h)
        return self.resample(h)


class _Mid(nn.Module):
    """ResBlock - SpatialSelfAttention - ResBlock at the lowest resolution."""

    def __init__(self, channels: int, dropout: float, attention: bool, norm_groups: int, qkv_bias: bool) -> None:
        super().__init__()
        self.block_1 = ResBlock(channels, channels, dropout=dropout, norm_groups=norm_groups)
        self.attn_1: nn.Module = SpatialSelfAttention(channels, norm_groups, qkv_bias) if attention else nn.Identity()
        self.block_2 = ResBlock(channels, channels, dropout=dropout, norm_groups=norm_groups)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """Image (B, in_channels, H, W) -> features (B, out_channels, H/f, W/f).

    Args:
        in_channels: image channels.
        ch: base width; level i has ``ch * ch_mult[i]`` channels.
        ch_mult: width multipliers, one per level; f = 2**(len(ch_mult)-1).
        num_res_blocks: ResBlocks per level.
        out_channels: channels of the output, ``latent_channels * regularizer.moments_factor``
            (2x for KL: mean and log-variance).
        resolution: input size; only used to decide where attention goes.
        attn_resolutions: feature-map sizes at which SpatialSelfAttention follows each ResBlock.
        dropout: dropout inside the ResBlocks.
        mid_block: whether to add the mid block (ResBlock - attention - ResBlock).
        mid_attention: whether the mid block has its attention layer. Global attention costs O((HW)^2),
            so configs with f = 1 or 2 turn it off.
        norm_groups: GroupNorm groups of every norm; a layer with C channels uses gcd(C, norm_groups)
            groups (so tiny widths still work). A diffusers ``AutoencoderKL`` uses ``norm_num_groups`` in
            every layer, i.e. a value that divides every width.
        attn_qkv_bias: biases on the attention's q/k/v projections (diffusers' VAE attention has them).
    """

    def __init__(
        self,
        in_channels: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        out_channels: int,
        resolution: int,
        attn_resolutions: Sequence[int] = (),
        dropout: float = 0.0,
        mid_block: bool = True,
        mid_attention: bool = True,
        norm_groups: int = 32,
        attn_qkv_bias: bool = False,
    ) -> None:
        super().__init__()
        self.ch_mult = _check_common("encoder", ch, ch_mult, num_res_blocks, resolution)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.ch, self.num_res_blocks, self.resolution = int(ch), int(num_res_blocks), int(resolution)
        self.attn_resolutions = tuple(int(r) for r in attn_resolutions)
        self.norm_groups, self.attn_qkv_bias = int(norm_groups), bool(attn_qkv_bias)
        g, qkv_bias = self.norm_groups, self.attn_qkv_bias

        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        in_mult = (1,) + self.ch_mult
        curr_res = resolution
        self.down = nn.ModuleList()
        block_in = ch
        for i, mult in enumerate(self.ch_mult):
            level = _Level()
            block_in, block_out = ch * in_mult[i], ch * mult
            for _ in range(num_res_blocks):
                level.block.append(ResBlock(block_in, block_out, dropout=dropout, norm_groups=g))
                block_in = block_out
                if curr_res in self.attn_resolutions:
                    level.attn.append(SpatialSelfAttention(block_in, g, qkv_bias))
            if i != len(self.ch_mult) - 1:
                level.resample = Downsample(block_in, with_conv=True)
                curr_res //= 2
            self.down.append(level)
        self.mid: nn.Module = _Mid(block_in, dropout, mid_attention, g, qkv_bias) if mid_block else nn.Identity()
        self.norm_out = group_norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # (B, ch, H, W)
        for level in self.down:
            h = level(h)  # level i: (B, ch*ch_mult[i], H/2^(i+1), W/2^(i+1)); the last level keeps its size
        h = self.mid(h)  # (B, ch*ch_mult[-1], H/f, W/f)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, out_channels, H/f, W/f)


class Decoder(nn.Module):
    """Latent (B, in_channels, H/f, W/f) -> image (B, out_channels, H, W).

    Args mirror :class:`Encoder` (``norm_groups`` and ``attn_qkv_bias`` included); ``in_channels`` is
    ``latent_channels`` and ``out_channels`` the image channels. Each level has ``num_res_blocks + 1`` ResBlocks (LDM layout). The last layer is
    ``conv_out``; its weight is the "last layer" of the adaptive GAN weight.
    """

    def __init__(
        self,
        out_channels: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        in_channels: int,
        resolution: int,
        attn_resolutions: Sequence[int] = (),
        dropout: float = 0.0,
        mid_block: bool = True,
        mid_attention: bool = True,
        norm_groups: int = 32,
        attn_qkv_bias: bool = False,
    ) -> None:
        super().__init__()
        self.ch_mult = _check_common("decoder", ch, ch_mult, num_res_blocks, resolution)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.ch, self.num_res_blocks, self.resolution = int(ch), int(num_res_blocks), int(resolution)
        self.attn_resolutions = tuple(int(r) for r in attn_resolutions)
        self.norm_groups, self.attn_qkv_bias = int(norm_groups), bool(attn_qkv_bias)
        g, qkv_bias = self.norm_groups, self.attn_qkv_bias

        block_in = ch * self.ch_mult[-1]
        curr_res = resolution // self.downsample_factor
        self.conv_in = nn.Conv2d(in_channels, block_in, 3, padding=1)
        self.mid: nn.Module = _Mid(block_in, dropout, mid_attention, g, qkv_bias) if mid_block else nn.Identity()
        # Levels are built (and run) from the lowest resolution up; self.up[0] is the lowest.
        self.up = nn.ModuleList()
        for i in reversed(range(len(self.ch_mult))):
            level = _Level()
            block_out = ch * self.ch_mult[i]
            for _ in range(num_res_blocks + 1):
                level.block.append(ResBlock(block_in, block_out, dropout=dropout, norm_groups=g))
                block_in = block_out
                if curr_res in self.attn_resolutions:
                    level.attn.append(SpatialSelfAttention(block_in, g, qkv_bias))
            if i != 0:
                level.resample = Upsample(block_in, with_conv=True)
                curr_res *= 2
            self.up.append(level)
        self.norm_out = group_norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)  # (B, ch*ch_mult[-1], H/f, W/f)
        h = self.mid(h)
        for level in self.up:
            h = level(h)  # (B, ch*ch_mult[i], 2x the previous size); the top level keeps its size
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, out_channels, H, W)


class IdentityEncoder(nn.Module):
    """The f = 1 pixel-space "encoder": returns its input unchanged; no parameters."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.in_channels = self.out_channels = int(in_channels)
        self.ch_mult: tuple[int, ...] = (1,)

    @property
    def downsample_factor(self) -> int:
        return 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class IdentityDecoder(nn.Module):
    """The f = 1 pixel-space "decoder": returns its input unchanged; no parameters (no ``conv_out``)."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.in_channels = self.out_channels = int(out_channels)
        self.ch_mult: tuple[int, ...] = (1,)

    @property
    def downsample_factor(self) -> int:
        return 1

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z
