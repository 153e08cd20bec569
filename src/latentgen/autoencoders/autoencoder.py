"""The first-stage model: encoder -> (1x1 quant_conv) -> regularizer -> (1x1 post_quant_conv) -> decoder.

``Autoencoder`` owns the latent contract (docs/architecture.md, "The latent contract"):
``downsample_factor`` (f), ``latent_channels`` and the latent scale/shift buffers. The second stage
uses ``encode_scaled`` / ``decode_scaled``::

    encode_scaled(x) = (encode(x) - latent_shift) * latent_scale
    decode_scaled(z) = decode(z / latent_scale + latent_shift)

Channel bookkeeping (checked in ``__init__``; a mismatch raises ``ConfigError`` naming the keys):

    encoder.out_channels == latent_channels * regularizer.moments_factor     (KL: 2C, VQ/identity: C)
    decoder.in_channels  == latent_channels
    encoder.downsample_factor == decoder.downsample_factor == downsample_factor
    encoder.in_channels == decoder.out_channels
    regularizer.code_dim == latent_channels  (VQ)

With ``quant_conv=True`` (LDM/VQGAN) a 1x1 conv maps the encoder output to the regularizer input with the
same channel count (``latent_channels * moments_factor``), and a 1x1 ``post_quant_conv`` maps the
regularized latent (``latent_channels``) to the decoder input (also ``latent_channels``). So the
channel counts above hold whether or not the 1x1 convs are there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from latentgen.autoencoders.regularizers import Regularizer
from latentgen.errors import ConfigError
from latentgen.randomness import BatchRandomness


@dataclass
class AutoencoderOutput:
    """recon: (B, C, H, W); reg_loss: unweighted regularizer loss (float32 scalar); log: detached scalars."""

    recon: torch.Tensor
    reg_loss: torch.Tensor
    log: dict[str, torch.Tensor] = field(default_factory=dict)


class Autoencoder(nn.Module):
    """Encoder + regularizer (KL | VQ | identity) + decoder, with the latent scale/shift buffers.

    Args:
        encoder: image (B, C_img, H, W) -> (B, latent_channels * moments_factor, H/f, W/f).
        regularizer: a :class:`~latentgen.autoencoders.regularizers.Regularizer`.
        decoder: (B, latent_channels, H/f, W/f) -> (B, C_img, H, W); its last layer is ``decoder.conv_out``.
        downsample_factor: f; must agree with the encoder's and decoder's ``ch_mult`` (f = 2**(len-1)).
        latent_channels: channels of the latent the second stage sees.
        quant_conv: add LDM's 1x1 ``quant_conv`` / ``post_quant_conv`` (channel-preserving, see module doc).
        post_quant_conv: add the 1x1 ``post_quant_conv``; ``None`` (default) follows ``quant_conv``. diffusers'
            ``AutoencoderKL`` switches the two separately (``use_quant_conv`` / ``use_post_quant_conv``).
        pretrained: the name of the pretrained weights this autoencoder was loaded from (e.g. the folder of
            a diffusers VAE, :mod:`latentgen.interop.diffusers_vae`), or None. A pretrained first stage is
            frozen: :attr:`is_trainable` is False, so no run trains it, and the latent contract names it.
    """

    latent_scale: torch.Tensor  # () buffer, registered in __init__
    latent_shift: torch.Tensor  # () buffer

    def __init__(
        self,
        encoder: nn.Module,
        regularizer: Regularizer,
        decoder: nn.Module,
        downsample_factor: int,
        latent_channels: int,
        quant_conv: bool = True,
        post_quant_conv: bool | None = None,
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        self.pretrained = None if pretrained is None else str(pretrained)
        self.downsample_factor, self.latent_channels = int(downsample_factor), int(latent_channels)
        self._check(encoder, regularizer, decoder)
        self.encoder, self.regularizer, self.decoder = encoder, regularizer, decoder
        c, mc = self.latent_channels, self.latent_channels * regularizer.moments_factor
        self.quant_conv: nn.Module = nn.Conv2d(mc, mc, 1) if quant_conv else nn.Identity()
        post_quant_conv = quant_conv if post_quant_conv is None else post_quant_conv
        self.post_quant_conv: nn.Module = nn.Conv2d(c, c, 1) if post_quant_conv else nn.Identity()
        self.register_buffer("latent_scale", torch.tensor(1.0))  # persistent: saved in the checkpoint
        self.register_buffer("latent_shift", torch.tensor(0.0))

    def _check(self, encoder: nn.Module, regularizer: Regularizer, decoder: nn.Module) -> None:
        f, c = self.downsample_factor, self.latent_channels
        if f < 1 or f & (f - 1):
            raise ConfigError(f"autoencoder.downsample_factor={f} must be a power of two (1, 2, 4, ..., 32)")
        if c < 1:
            raise ConfigError(f"autoencoder.latent_channels={c} must be >= 1")
        for name, module in (("encoder", encoder), ("decoder", decoder)):
            mf = getattr(module, "downsample_factor", None)
            if mf is not None and mf != f:
                ch_mult = list(getattr(module, "ch_mult", ()))
                raise ConfigError(
                    f"autoencoder.downsample_factor={f} but autoencoder.{name}.ch_mult={ch_mult} gives "
                    f"f = 2**(len(ch_mult)-1) = {mf}; set autoencoder.downsample_factor: {mf} or give ch_mult "
                    f"{f.bit_length()} entries"
                )
        mf = regularizer.moments_factor
        enc_out = getattr(encoder, "out_channels", None)
        if enc_out is not None and enc_out != c * mf:
            raise ConfigError(
                f"autoencoder.encoder.out_channels={enc_out} must equal autoencoder.latent_channels ({c}) * "
                f"moments_factor ({mf} for {type(regularizer).__name__}) = {c * mf}"
                + "; use "
                + ("${mul:${autoencoder.latent_channels},2}" if mf == 2 else "${autoencoder.latent_channels}")
            )
        dec_in = getattr(decoder, "in_channels", None)
        if dec_in is not None and dec_in != c:
            raise ConfigError(
                f"autoencoder.decoder.in_channels={dec_in} must equal autoencoder.latent_channels={c}; "
                "use ${autoencoder.latent_channels}"
            )
        enc_in, dec_out = getattr(encoder, "in_channels", None), getattr(decoder, "out_channels", None)
        if enc_in is not None and dec_out is not None and enc_in != dec_out:
            raise ConfigError(
                f"autoencoder.encoder.in_channels={enc_in} differs from autoencoder.decoder.out_channels={dec_out}; "
                "both should be ${data.channels}"
            )
        code_dim = getattr(regularizer, "code_dim", None)
        if code_dim is not None and code_dim != c:
            raise ConfigError(
                f"autoencoder.regularizer.code_dim={code_dim} must equal autoencoder.latent_channels={c}; "
                "use ${autoencoder.latent_channels}"
            )

    # ------------------------------------------------------------------------------------ training
    def forward(self, x: torch.Tensor) -> AutoencoderOutput:
        """x: (B, C, H, W) in [-1, 1] -> reconstruction, unweighted regularizer loss, logs."""
        h = self.quant_conv(self.encoder(x))  # (B, C_lat * moments_factor, H/f, W/f)
        reg = self.regularizer(h)  # z: (B, C_lat, H/f, W/f)
        recon = self.decoder(self.post_quant_conv(reg.z))  # (B, C, H, W)
        return AutoencoderOutput(recon, reg.loss, reg.log)

    @property
    def last_layer(self) -> torch.Tensor:
        """The weight of the decoder's last layer (``decoder.conv_out.weight``), for the adaptive GAN weight."""
        conv_out = getattr(self.decoder, "conv_out", None)
        if conv_out is None:
            raise ConfigError(
                f"autoencoder.decoder ({type(self.decoder).__name__}) has no conv_out layer; an identity "
                "autoencoder has no last layer and is not trained (see Autoencoder.is_trainable)"
            )
        return conv_out.weight

    @property
    def is_trainable(self) -> bool:
        """False when the autoencoder has no parameters at all (the f = 1 identity) or is ``pretrained``."""
        return self.pretrained is None and any(True for _ in self.parameters())

    # -------------------------------------------------------------------------------- second stage
    def encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        """The regularizer's input (B, C_lat * moments_factor, h, w); for KL, cat(mean, logvar) before clamping.

        Latent caching stores this (or ``regularizer.moments`` of it) and calls ``regularizer.latent`` later.
        """
        return self.quant_conv(self.encoder(x))

    def encode(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Unscaled latent (B, C_lat, H/f, W/f): KL mean (or a posterior sample), VQ pre-quantization h."""
        return self.regularizer.latent(self.encode_raw(x), sample=sample, generator=generator)

    def latent_from_raw(self, h: torch.Tensor, rng: BatchRandomness | None = None) -> torch.Tensor:
        """Scaled latent of a regularizer input ``h`` (from :meth:`encode_raw` or the latent cache): a
        posterior sample whose noise is drawn from ``rng`` when given (KL), else the mean (VQ: h)."""
        z = self.regularizer.latent(h, sample=False) if rng is None else self.regularizer.sample_latent(h, rng)
        return self.scale_latent(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latent (B, C_lat, h, w) -> image (B, C, h*f, w*f); VQ quantizes first."""
        return self.decoder(self.post_quant_conv(self.regularizer.decoder_input(z)))

    def encode_scaled(
        self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(encode(x) - latent_shift) * latent_scale: what the second stage models."""
        return self.scale_latent(self.encode(x, sample=sample, generator=generator))

    def scale_latent(self, z: torch.Tensor) -> torch.Tensor:
        """(z - latent_shift) * latent_scale for an unscaled latent z (e.g. from cached ``encode_raw``)."""
        return (z - self.latent_shift.to(z.dtype)) * self.latent_scale.to(z.dtype)

    def decode_scaled(self, z: torch.Tensor) -> torch.Tensor:
        """decode(z / latent_scale + latent_shift)."""
        return self.decode(z / self.latent_scale.to(z.dtype) + self.latent_shift.to(z.dtype))

    @torch.no_grad()
    def set_latent_stats(self, scale: float | torch.Tensor, shift: float | torch.Tensor = 0.0) -> None:
        """Copy scale and shift (floats or one-element tensors) into the existing buffers, in place."""
        for name, value, buf in (("scale", scale, self.latent_scale), ("shift", shift, self.latent_shift)):
            t = torch.as_tensor(value, dtype=torch.float64)
            if t.numel() != 1 or not torch.isfinite(t).all():
                raise ConfigError(f"latent {name} must be one finite number, got {value!r}")
            if name == "scale" and float(t) <= 0:
                raise ConfigError(f"latent scale must be > 0, got {float(t)}")
            buf.copy_(t.reshape(()).to(buf.dtype))

    def latent_shape(self, resolution: int | tuple[int, int]) -> tuple[int, int, int]:
        """(C_lat, H/f, W/f) for an image of size ``resolution`` (an int or (H, W))."""
        hw = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        h, w = (int(v) for v in hw)
        f = self.downsample_factor
        if h % f or w % f:
            raise ConfigError(
                f"data.resolution={resolution} is not divisible by autoencoder.downsample_factor={f}; "
                f"use a multiple of {f}"
            )
        return self.latent_channels, h // f, w // f
