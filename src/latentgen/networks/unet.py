"""The ADM / LDM UNet denoiser (Dhariwal & Nichol 2021; Rombach et al. 2022, App. E).

Layout for ``ch_mult = (1, 2, 4)`` and ``num_res_blocks = 2`` (S = ``input_size``)::

    conv_in                                   S      ch            -> skip
    level 0: [Res (+Tf)] x 2                  S      ch            -> skip each
             Down                             S/2                  -> skip
    level 1: [Res (+Tf)] x 2                  S/2    2ch           -> skip each
             Down                             S/4                  -> skip
    level 2: [Res (+Tf)] x 2                  S/4    4ch           -> skip each
    middle:  Res, Tf, Res                     S/4    4ch
    level 2: [cat skip, Res (+Tf)] x 3, Up    S/4 -> S/2
    level 1: [cat skip, Res (+Tf)] x 3, Up    S/2 -> S
    level 0: [cat skip, Res (+Tf)] x 3        S
    out:     GroupNorm, SiLU, zero-init conv  S      out_channels

"Res" is :class:`~latentgen.nn.ResBlock` modulated by the embedding ``emb = MLP(sin(1000 t)) [+ Linear(vector)]``
(ADM's scale-shift norm by default); "Tf" is a :class:`~latentgen.nn.SpatialTransformer` (self-attention, plus
cross-attention over ``cond.context`` when ``context_dim`` is set), used at the feature-map sizes listed in
``attention_resolutions`` and in the middle block; with ``attention_type="plain"`` it is the unconditional
LDM/ADM :class:`~latentgen.nn.AttentionBlock` (norm, self-attention, residual; no feed-forward), which makes the
network the same graph as diffusers' ``UNet2DModel`` (``latentgen.interop.diffusers_unet``).

Every block is called as ``block(h, emb, context, context_mask[, skip])`` and may be wrapped in
non-reentrant gradient checkpointing. ``forward`` has no data-dependent Python control flow, so the module
compiles with ``torch.compile`` without graph breaks.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from latentgen.conditioning import Conditioning
from latentgen.errors import ConfigError
from latentgen.networks.conditioning_checks import check_context_and_vector, check_input_channels
from latentgen.nn import (
    AttentionBlock,
    Downsample,
    ResBlock,
    SpatialTransformer,
    TimestepEmbedder,
    Upsample,
    group_norm,
)


class UNetBlock(nn.Module):
    """One step of the UNet: [concat skip] -> [ResBlock] -> [SpatialTransformer] -> [resample].

    Any part may be absent. ``resample`` is a Down/Upsample layer, or a resampling ResBlock
    (``resblock_updown``), which also takes the embedding.
    """

    def __init__(
        self,
        res: ResBlock | None = None,
        attn: SpatialTransformer | AttentionBlock | None = None,
        resample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.res, self.attn, self.resample = res, attn, resample
        self._resample_takes_emb = isinstance(resample, ResBlock)

    def forward(
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        skip: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if skip is not None:
            x = torch.cat([x, skip], dim=1)  # (B, C + C_skip, H, W)
        if self.res is not None:
            x = self.res(x, emb)  # (B, C_out, H, W)
        if self.attn is not None:
            x = self.attn(x, context, context_mask)  # (B, C_out, H, W)
        if self.resample is not None:
            x = self.resample(x, emb) if self._resample_takes_emb else self.resample(x)  # (B, C_out, H', W')
        return x


class UNet(nn.Module):
    """ADM/LDM-style UNet denoiser: ``forward(x_t, t, cond) -> (B, out_channels, H, W)``.

    Args:
        in_channels: input channels = latent channels + ``cond.concat`` channels.
        out_channels: output channels (2x the latent channels when the objective learns the variance).
        ch: base width; level ``i`` has ``ch * ch_mult[i]`` channels.
        ch_mult: width multipliers, one per resolution level; there are ``len(ch_mult) - 1`` downsamplings.
        num_res_blocks: ResBlocks per level on the way down (``num_res_blocks + 1`` on the way up).
        input_size: spatial size of ``x_t`` (latent resolution); it must be divisible by
            ``2 ** (len(ch_mult) - 1)``. Used to turn ``attention_resolutions`` into levels.
        attention_resolutions: FEATURE-MAP SIZES (e.g. ``[16, 8]``) at which a SpatialTransformer follows each
            ResBlock. Sizes that no level has are ignored with a warning (so one config can serve an f-sweep).
        num_heads: number of attention heads; when given it wins over ``head_channels``.
        head_channels: channels per attention head (LDM's ``num_head_channels``; default 32).
        transformer_depth: TransformerBlocks per SpatialTransformer.
        context_dim: width of ``cond.context`` tokens; enables cross-attention in every transformer block.
        vector_dim: width of ``cond.vector``, added to the time embedding through ``Linear(vector_dim, emb)``.
        dropout: dropout inside ResBlocks and transformer feed-forwards.
        scale_shift_norm: ADM's ``norm(h) * (1 + scale) + shift`` conditioning (else additive).
        resblock_updown: resample with ResBlocks (BigGAN style) instead of strided conv / nearest+conv.
        gradient_checkpointing: recompute every block in the backward pass (non-reentrant) while training.
        time_embed_dim: width of the embedding (default ``4 * ch``).
        channels_last: keep weights and activations in ``torch.channels_last`` memory format.
        mid_attention: put a SpatialTransformer in the middle block (as ADM and LDM always do).
        attention_type: "transformer" (LDM's SpatialTransformer: self-attention, cross-attention when
            ``context_dim`` is set, GEGLU feed-forward) or "plain" (ADM/LDM-unconditional AttentionBlock: norm and
            multi-head self-attention only; no ``context_dim``; ``transformer_depth`` does not apply).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        input_size: int,
        attention_resolutions: Sequence[int] = (),
        num_heads: int | None = None,
        head_channels: int | None = 32,
        transformer_depth: int = 1,
        context_dim: int | None = None,
        vector_dim: int | None = None,
        dropout: float = 0.0,
        scale_shift_norm: bool = True,
        resblock_updown: bool = False,
        gradient_checkpointing: bool = False,
        time_embed_dim: int | None = None,
        channels_last: bool = False,
        mid_attention: bool = True,
        attention_type: str = "transformer",
    ) -> None:
        super().__init__()
        ch_mult = tuple(int(m) for m in ch_mult)
        attention_resolutions = tuple(int(r) for r in attention_resolutions)
        n_levels = len(ch_mult)
        if n_levels == 0:
            raise ConfigError(
                "denoiser.ch_mult is empty: give one width multiplier per resolution level, e.g. [1, 2, 4]"
            )
        if num_heads is None and head_channels is None:
            raise ConfigError("denoiser: set one of num_heads or head_channels (both are null)")
        if input_size % 2 ** (n_levels - 1) != 0:
            raise ConfigError(
                f"denoiser.input_size={input_size} is not divisible by 2**(len(ch_mult)-1)={2 ** (n_levels - 1)} "
                f"(ch_mult={list(ch_mult)}): use fewer levels or a smaller autoencoder.downsample_factor / "
                f"larger data.resolution"
            )
        if attention_type not in ("transformer", "plain"):
            raise ConfigError(f"denoiser.attention_type={attention_type!r}; use 'transformer' or 'plain'")
        if attention_type == "plain" and context_dim is not None:
            raise ConfigError(
                "denoiser.attention_type=plain has no cross-attention but denoiser.context_dim is set (the "
                "conditioner gives cross-attention tokens): use attention_type=transformer or a conditioner without "
                "context (conditioner=none, class_vector)"
            )
        level_sizes = [input_size // 2**i for i in range(n_levels)]
        missing = sorted(set(attention_resolutions) - set(level_sizes), reverse=True)
        if missing:
            warnings.warn(
                f"denoiser.attention_resolutions {missing} match no feature-map size of this UNet "
                f"(sizes {level_sizes} for input_size={input_size}); no attention there",
                UserWarning,
                stacklevel=2,
            )
        attn_levels = {i for i, s in enumerate(level_sizes) if s in attention_resolutions}
        if context_dim is not None and not attn_levels and not mid_attention:
            raise ConfigError(
                "denoiser.context_dim is set but the UNet has no transformer block to cross-attend with: "
                "set denoiser.attention_resolutions to some of the sizes "
                f"{level_sizes} or denoiser.mid_attention=true"
            )

        self.in_channels, self.out_channels = in_channels, out_channels
        self.input_size = input_size
        self.context_dim, self.vector_dim = context_dim, vector_dim
        self.gradient_checkpointing = gradient_checkpointing
        self.channels_last = channels_last
        self.attention_type = attention_type
        emb_dim = time_embed_dim or 4 * ch

        self.time_embed = TimestepEmbedder(ch, emb_dim)
        self.vector_embed = nn.Linear(vector_dim, emb_dim) if vector_dim is not None else None

        def res(c_in: int, c_out: int, **kw) -> ResBlock:
            return ResBlock(c_in, c_out, emb_dim, dropout=dropout, scale_shift=scale_shift_norm, **kw)

        def attn(c: int) -> SpatialTransformer | AttentionBlock:
            if num_heads is not None:
                if c % num_heads:
                    raise ConfigError(f"denoiser.num_heads={num_heads} does not divide the {c} channels of a level")
                heads, dim_head = num_heads, c // num_heads
            else:
                assert head_channels is not None  # checked above: one of num_heads / head_channels is set
                if c % head_channels:
                    raise ConfigError(
                        f"denoiser.head_channels={head_channels} does not divide the {c} channels of a level"
                    )
                heads, dim_head = c // head_channels, head_channels
            if attention_type == "plain":
                return AttentionBlock(c, heads, dim_head)
            return SpatialTransformer(c, heads, dim_head, transformer_depth, context_dim, dropout)

        # --- encoder ---
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.input_blocks = nn.ModuleList()
        skip_channels = [ch]
        c = ch
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.input_blocks.append(
                    UNetBlock(res(c, ch * mult), attn(ch * mult) if level in attn_levels else None)
                )
                c = ch * mult
                skip_channels.append(c)
            if level != n_levels - 1:
                down = res(c, c, down=True) if resblock_updown else Downsample(c)
                self.input_blocks.append(UNetBlock(resample=down))
                skip_channels.append(c)

        # --- middle ---
        self.middle_blocks = nn.ModuleList(
            [UNetBlock(res(c, c), attn(c) if mid_attention else None), UNetBlock(res(c, c))]
        )

        # --- decoder ---
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(n_levels)):
            mult = ch_mult[level]
            for i in range(num_res_blocks + 1):
                c_skip = skip_channels.pop()
                up = None
                if level != 0 and i == num_res_blocks:
                    up = res(ch * mult, ch * mult, up=True) if resblock_updown else Upsample(ch * mult)
                self.output_blocks.append(
                    UNetBlock(res(c + c_skip, ch * mult), attn(ch * mult) if level in attn_levels else None, up)
                )
                c = ch * mult

        self.norm_out = group_norm(c)
        self.conv_out = nn.Conv2d(c, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # the network starts as the zero function
        nn.init.zeros_(self.conv_out.bias)  # type: ignore[arg-type]  # Conv2d(bias=True) has a bias

        if channels_last:
            self.to(memory_format=torch.channels_last)

    def _call(self, block: nn.Module, *args: torch.Tensor | None) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        """x_t: (B, C_lat, H, W); t: (B,) or () float in [0, 1]; cond: optional Conditioning.

        Returns (B, out_channels, H, W) in the dtype of ``x_t``.
        """
        context = context_mask = vector = concat = None
        if cond is not None:
            context, context_mask, vector, concat = cond.context, cond.context_mask, cond.vector, cond.concat
        x = x_t if concat is None else torch.cat([x_t, concat.to(x_t.dtype)], dim=1)  # (B, C_lat + C_c, H, W)
        self._check_inputs(x, x_t, concat, context, vector)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if t.ndim == 0:
            t = t.expand(x.shape[0])  # (B,)

        emb = self.time_embed(t)  # (B, E)
        if self.vector_embed is not None and vector is not None:  # both or neither (_check_inputs)
            emb = emb + self.vector_embed(vector.to(emb.dtype))  # (B, E)

        h = self.conv_in(x)  # (B, ch, H, W)
        skips = [h]
        for block in self.input_blocks:
            h = self._call(block, h, emb, context, context_mask)
            skips.append(h)
        for block in self.middle_blocks:
            h = self._call(block, h, emb, context, context_mask)
        for block in self.output_blocks:
            h = self._call(block, h, emb, context, context_mask, skips.pop())
        out = self.conv_out(F.silu(self.norm_out(h)))  # (B, out_channels, H, W)
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
        check_context_and_vector(context, vector, context_dim=self.context_dim, vector_dim=self.vector_dim)
