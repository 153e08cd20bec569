"""Concat conditioners: image-shaped conditions concatenated to the noisy latent ``x_t`` (LDM §4.3-4.5).

Each returns ``Conditioning(concat=(B, C_c, h, w))`` at the latent size ``h = H / f``; the denoiser's
``in_channels`` is ``latent_channels + C_c`` by config interpolation, and every conditioner checks
that the ``concat_channels`` its config declares is what it produces.

- :class:`LowResConditioner` (super-resolution): ``low_res = downsample(image, factor)`` (bicubic,
  antialiased), then bicubic to the latent size (with factor = f that is the LDM SR layout);
  :class:`EncodedLowResConditioner`: bicubic back to full size and encoded by the first stage.
- :class:`InpaintingConditioner`: ``cat(E((1 - m) * x), m_lat)`` with ``m`` a random box / brush-stroke
  mask (1 = missing) made by the conditioner, ``m_lat`` its area-average at latent size; so
  ``concat_channels = latent_channels + 1`` (LDM's inpainting layout, in_channels = z + z + 1).
- :class:`SemanticMapConditioner`: the ``(B, H, W)`` int64 segmentation ``batch["mask"]`` one-hot,
  area-averaged to the latent size (class fractions per latent pixel); :class:`EmbeddedSemanticMapConditioner`:
  a learned embedding per class instead of the one-hot.

Dropped samples (``drop_prob``, for CFG) and ``null(batch)`` get an all-zero concat.
Conditioners that use the first stage receive it through ``set_first_stage`` (the system calls it)
and hold it by reference (:class:`~latentgen.conditioning.shared.SharedModule`): the EMA deep copy
shares it and it is not in the conditioner's ``state_dict``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latentgen.conditioning.base import Conditioner, Conditioning, check_declared_dims
from latentgen.conditioning.masks import MASK_KINDS, centre_box_masks, random_masks
from latentgen.conditioning.shared import SharedModule
from latentgen.errors import ConfigError, DataError
from latentgen.randomness import BatchRandomness


def read_images(batch: dict[str, Any], who: str) -> torch.Tensor:
    image = batch.get("image")
    if image is None:
        raise DataError(
            f"{who} needs batch['image'] (B, C, H, W) in [-1, 1], but the batch has keys {sorted(batch)}. "
            "With data.cache_latents=true the images are not loaded: set data.cache_latents=false for this task."
        )
    if image.dim() != 4:
        raise DataError(f"{who}: batch['image'] must be (B, C, H, W), got shape {tuple(image.shape)}")
    return image.float()


def zero_dropped(concat: torch.Tensor, drop_mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the concat channels of dropped samples: (B, C, h, w) -> (B, C, h, w)."""
    if drop_mask is None:
        return concat
    keep = (~drop_mask.to(concat.device))[:, None, None, None].to(concat.dtype)  # (B, 1, 1, 1)
    return concat * keep


def resize(x: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Bicubic (antialiased when shrinking) resize of (B, C, H, W) to (B, C, *size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    antialias = shrink and mode in ("bilinear", "bicubic")
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias)


def _check_stored_mode(conditioner: Conditioner, mode: str | None, classes: dict[str, str]) -> None:
    """Configs stored by older runs name a ``mode``; the mode is now the class. Refuse one that names the
    other class, saying which class to use."""
    if mode is None or mode == type(conditioner).mode_name:  # type: ignore[attr-defined]
        return
    if mode not in classes:
        raise ConfigError(f"conditioner.mode={mode!r} is unknown; the mode is the class: {sorted(classes.values())}")
    raise ConfigError(
        f"conditioner.mode={mode!r} is {classes[mode]}, not {type(conditioner).__name__}: set the conditioner's "
        f"_target_ to latentgen.conditioning.concat.{classes[mode]} and drop `mode`"
    )


def _check_declared(
    name: str, concat_channels: int, context_dim: int | None, vector_dim: int | None, produced: int, why: str
) -> None:
    check_declared_dims(name, (concat_channels, context_dim, vector_dim), (produced, None, None), why)


class _FirstStageUser:
    """Mixin: ``set_first_stage`` stores the autoencoder by reference and checks its latent contract."""

    latent_channels: int
    downsample_factor: int
    _first_stage: SharedModule | None

    def set_first_stage(self, first_stage: nn.Module) -> None:
        c, f = int(first_stage.latent_channels), int(first_stage.downsample_factor)
        if (c, f) != (self.latent_channels, self.downsample_factor):
            raise ConfigError(
                f"{type(self).__name__}: configured for latent_channels={self.latent_channels}, "
                f"downsample_factor={self.downsample_factor} but the first stage has {c}, {f}; interpolate "
                "${autoencoder.latent_channels} and ${autoencoder.downsample_factor}"
            )
        self._first_stage = SharedModule(first_stage)

    @torch.no_grad()
    def encode_first_stage(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled latent (posterior mean) of (B, C, H, W) images: (B, latent_channels, H/f, W/f)."""
        if self._first_stage is None:
            raise ConfigError(
                f"{type(self).__name__} encodes images with the first stage, but none was set: the latent system "
                "calls conditioner.set_first_stage(autoencoder); do that yourself when using the conditioner alone"
            )
        fs = self._first_stage.on(images.device)
        p = next(fs.parameters(), None)  # None for the identity first stage (f = 1)
        return fs.encode_scaled(images if p is None else images.to(p.dtype), sample=False).float()


class LowResConditioner(_FirstStageUser, Conditioner):
    """Super-resolution: the conditioner makes ``low_res = downsample(image, factor)`` itself.

    At sampling time ``batch["low_res"]`` (B, C, H/factor, W/factor) may give the low-res input directly;
    otherwise it is made from ``batch["image"]`` (the high-res target), as in training.

    Args:
        factor: the super-resolution factor (4: 32 px -> 8 px -> 32 px).
        downsample_factor, latent_channels, image_channels: the latent / data contract (interpolated).
        drop_prob: per-sample probability of the zero (null) condition during training.
        mode: only for configs stored by older runs (``resize`` here; ``encode`` is
            :class:`EncodedLowResConditioner`).

    The concat is the low-res input bicubic-resized to the latent size: ``image_channels`` channels.
    """

    mode_name = "resize"

    accepts_prompts = False
    input_keys = ("image",)

    def __init__(
        self,
        factor: int = 4,
        downsample_factor: int = 4,
        image_channels: int = 3,
        latent_channels: int = 3,
        drop_prob: float = 0.0,
        concat_channels: int = 3,
        context_dim: int | None = None,
        vector_dim: int | None = None,
        mode: str | None = None,
    ) -> None:
        super().__init__(drop_prob=drop_prob)
        _check_stored_mode(self, mode, {"resize": "LowResConditioner", "encode": "EncodedLowResConditioner"})
        if int(factor) < 1:
            raise ConfigError(f"conditioner.factor={factor} must be >= 1")
        self.factor = int(factor)
        self.downsample_factor, self.latent_channels = int(downsample_factor), int(latent_channels)
        self.image_channels = int(image_channels)
        produced, why = self.produced_channels()
        _check_declared("superres", concat_channels, context_dim, vector_dim, produced, why)
        self.concat_channels, self.context_dim, self.vector_dim = produced, None, None
        self._first_stage = None

    def produced_channels(self) -> tuple[int, str]:
        """The concat's channels and where they come from."""
        return self.image_channels, "image channels: the low-res image resized to the latent size"

    def concat_of(self, low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The concat (B, C_c, h, w) of the low-res input (B, C, H/factor, W/factor) for full size ``size``."""
        h, w = size
        return resize(low, (h // self.downsample_factor, w // self.downsample_factor))  # (B, C, h, w)

    def low_res(self, batch: dict[str, Any]) -> torch.Tensor:
        """(B, C, H/factor, W/factor) in [-1, 1]: ``batch["low_res"]`` or the downsampled ``batch["image"]``."""
        if batch.get("low_res") is not None:
            return batch["low_res"].float()
        image = read_images(batch, "conditioner=superres")
        h, w = image.shape[-2:]
        if h % self.factor or w % self.factor:
            raise DataError(
                f"conditioner=superres: image size {h}x{w} is not divisible by conditioner.factor={self.factor}"
            )
        return resize(image, (h // self.factor, w // self.factor)).clamp(-1, 1)  # (B, C, H/s, W/s)

    def _full_size(self, batch: dict[str, Any], low: torch.Tensor) -> tuple[int, int]:
        if batch.get("image") is not None:
            return tuple(batch["image"].shape[-2:])  # type: ignore[return-value]
        return low.shape[-2] * self.factor, low.shape[-1] * self.factor

    def encode(self, batch: dict[str, Any], drop_mask: torch.Tensor | None) -> Conditioning:
        low = self.low_res(batch)
        concat = self.concat_of(low, self._full_size(batch, low))  # (B, C_c, h, w)
        return Conditioning(concat=zero_dropped(concat, drop_mask))

    @torch.no_grad()
    def visualize(self, batch: dict[str, Any]) -> torch.Tensor:
        """The low-res input, pixel-replicated to full size: (B, C, H, W) in [-1, 1]."""
        low = self.low_res(batch)
        return F.interpolate(low, size=self._full_size(batch, low), mode="nearest")

    def bicubic_baseline(self, batch: dict[str, Any]) -> torch.Tensor:
        """The low-res input bicubically upsampled to full size (the baseline for PSNR/SSIM)."""
        low = self.low_res(batch)
        return resize(low, self._full_size(batch, low)).clamp(-1, 1)


class EncodedLowResConditioner(LowResConditioner):
    """Super-resolution with the low-res input bicubic-upsampled to full size and encoded by the first stage:
    the concat has ``latent_channels`` channels."""

    mode_name = "encode"

    def produced_channels(self) -> tuple[int, str]:
        return self.latent_channels, "latent channels: the upsampled low-res image encoded by the first stage"

    def concat_of(self, low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.encode_first_stage(resize(low, size).clamp(-1, 1))  # (B, C_lat, h, w)


class InpaintingConditioner(_FirstStageUser, Conditioner):
    """Inpainting: ``concat = cat(E((1 - m) * x), area(m))`` with the mask ``m`` made by the conditioner.

    Masks (1 = missing): ``batch["inpaint_mask"]`` ((B, H, W) or (B, 1, H, W)) when the batch has one;
    otherwise random boxes / brush strokes drawn from the step's randomness while training; in eval mode fixed masks
    (``eval_mask=random``: the same seeded random masks every call, seed ``eval_seed``; ``center``: a
    centred square of half the side). :meth:`mask_for` returns the mask a call uses, for
    masked-region metrics; :meth:`paste_known` puts the known pixels back into samples.
    """

    accepts_prompts = False
    input_keys = ("image",)

    def __init__(
        self,
        latent_channels: int = 3,
        downsample_factor: int = 4,
        mask_kinds: Sequence[str] = MASK_KINDS,
        eval_mask: str = "random",
        eval_seed: int = 0,
        drop_prob: float = 0.0,
        concat_channels: int = 4,
        context_dim: int | None = None,
        vector_dim: int | None = None,
    ) -> None:
        super().__init__(drop_prob=drop_prob)
        self.latent_channels, self.downsample_factor = int(latent_channels), int(downsample_factor)
        _check_declared(
            "inpaint", concat_channels, context_dim, vector_dim, self.latent_channels + 1,
            "masked-image latent + 1 mask channel: ${add:${autoencoder.latent_channels},1}",
        )  # fmt: skip
        if eval_mask not in ("random", "center"):
            raise ConfigError(f"conditioner.eval_mask={eval_mask!r}: use 'random' or 'center'")
        self.mask_kinds = tuple(mask_kinds)
        bad = [k for k in self.mask_kinds if k not in MASK_KINDS]
        if not self.mask_kinds or bad:
            raise ConfigError(f"conditioner.mask_kinds={list(self.mask_kinds)}: choose from {list(MASK_KINDS)}")
        self.eval_mask, self.eval_seed = eval_mask, int(eval_seed)
        self.concat_channels, self.context_dim, self.vector_dim = self.latent_channels + 1, None, None
        self._first_stage = None

    def mask_for(
        self, batch: dict[str, Any], rng: BatchRandomness | None = None, training: bool | None = None
    ) -> torch.Tensor:
        """The inpainting mask of this batch: (B, 1, H, W) float in {0, 1}, 1 = missing (to be generated).

        ``training`` (default: the module's mode) chooses random masks or the fixed eval masks;
        ``batch["inpaint_mask"]`` always wins. Random masks are drawn per sample of the global batch from
        the ``inpaint_masks`` sub-stream of ``rng`` (on the CPU; None: the global RNG), so a DDP rank gets
        the masks one process gives the same samples.
        """
        image = read_images(batch, "conditioner=inpaint")
        b, _, h, w = image.shape
        given = batch.get("inpaint_mask")
        if given is not None:
            m = given if given.dim() == 4 else given[:, None]  # (B, H, W) -> (B, 1, H, W)
            if tuple(m.shape) != (b, 1, h, w):
                raise DataError(f"batch['inpaint_mask'] has shape {tuple(given.shape)}; expected ({b}, [1,] {h}, {w})")
            return (m.float() > 0.5).float().to(image.device)
        if self.training if training is None else training:
            rng = rng if rng is not None else BatchRandomness.local(b)
            if rng.batch_size != b:
                raise DataError(f"the step's randomness is for {rng.batch_size} samples, the batch has {b}")
            masks = rng.substream("inpaint_masks", device="cpu")
            return masks.draw(lambda n, g, _: random_masks(n, (h, w), g, self.mask_kinds)).to(image.device)
        if self.eval_mask == "center":
            return centre_box_masks(b, (h, w)).to(image.device)
        return random_masks(b, (h, w), torch.Generator().manual_seed(self.eval_seed), self.mask_kinds).to(image.device)

    def masked_image(self, batch: dict[str, Any], mask: torch.Tensor) -> torch.Tensor:
        """(1 - m) * x: the known pixels, 0 (mid grey) in the hole. (B, C, H, W)."""
        return read_images(batch, "conditioner=inpaint") * (1.0 - mask)

    def condition(
        self, batch: dict[str, Any], drop_mask: torch.Tensor | None, rng: BatchRandomness | None = None
    ) -> Conditioning:
        mask = self.mask_for(batch, rng)  # (B, 1, H, W)
        z = self.encode_first_stage(self.masked_image(batch, mask))  # (B, C_lat, h, w)
        m_lat = F.interpolate(mask, size=z.shape[-2:], mode="area")  # (B, 1, h, w): missing fraction
        return Conditioning(concat=zero_dropped(torch.cat([z, m_lat], dim=1), drop_mask))  # (B, C_lat + 1, h, w)

    def encode(self, batch: dict[str, Any], drop_mask: torch.Tensor | None) -> Conditioning:
        return self.condition(batch, drop_mask, None)

    @torch.no_grad()
    def visualize(self, batch: dict[str, Any]) -> torch.Tensor:
        """The masked input as the model sees it at sampling time (hole in mid grey, edged in red): (B, C, H, W)."""
        mask = self.mask_for(batch, training=False)
        img = self.masked_image(batch, mask)
        if img.shape[1] == 3:
            edge = (F.max_pool2d(mask, 3, stride=1, padding=1) - mask).clamp(0, 1)  # (B, 1, H, W) outer rim
            red = torch.tensor([1.0, -1.0, -1.0], device=img.device)[None, :, None, None]
            img = img * (1 - edge) + red * edge
        return img

    def paste_known(
        self, samples: torch.Tensor, batch: dict[str, Any], mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Samples with the known pixels of ``batch["image"]`` put back: m * samples + (1 - m) * image."""
        mask = self.mask_for(batch, training=False) if mask is None else mask
        return mask * samples + (1.0 - mask) * read_images(batch, "conditioner=inpaint")


# A fixed palette for visualizing segmentation maps (class 0 = background in dark grey).
_PALETTE = torch.tensor(
    [[0.15, 0.15, 0.15], [0.90, 0.10, 0.10], [0.10, 0.80, 0.10], [0.15, 0.35, 1.00], [1.00, 0.85, 0.05],
     [0.90, 0.15, 0.90], [0.05, 0.90, 0.90], [1.00, 1.00, 1.00], [1.00, 0.55, 0.05], [0.55, 0.30, 0.10]]
)  # fmt: skip


class SemanticMapConditioner(Conditioner):
    """Semantic synthesis: ``batch["mask"]`` (B, H, W) int64 labels in [0, num_classes) -> concat at latent size.

    The concat is the one-hot map area-averaged to the latent size: ``num_classes`` channels of class
    fractions per latent pixel (:class:`EmbeddedSemanticMapConditioner`: a learned embedding instead).

    Args:
        num_classes: number of labels in the map (shapes: 7 = background + 6 kinds).
        downsample_factor: f of the first stage (latent size = H / f).
        drop_prob: per-sample probability of the zero (null) condition during training.
        mode: only for configs stored by older runs (``onehot`` here; ``embed`` is
            :class:`EmbeddedSemanticMapConditioner`).
    """

    accepts_prompts = False
    input_keys = ("mask",)
    mode_name = "onehot"

    def __init__(
        self,
        num_classes: int,
        downsample_factor: int = 4,
        drop_prob: float = 0.0,
        concat_channels: int = 0,
        context_dim: int | None = None,
        vector_dim: int | None = None,
        mode: str | None = None,
    ) -> None:
        super().__init__(drop_prob=drop_prob)
        self._set_map(num_classes, downsample_factor, mode)
        self._declare(self.num_classes, "one-hot: num_classes channels", concat_channels, context_dim, vector_dim)

    def _set_map(self, num_classes: int, downsample_factor: int, mode: str | None) -> None:
        _check_stored_mode(self, mode, {"onehot": "SemanticMapConditioner", "embed": "EmbeddedSemanticMapConditioner"})
        if int(num_classes) < 2:
            raise ConfigError(f"conditioner.num_classes={num_classes} must be >= 2")
        self.num_classes = int(num_classes)
        self.downsample_factor = int(downsample_factor)

    def _declare(
        self, produced: int, why: str, concat_channels: int, context_dim: int | None, vector_dim: int | None
    ) -> None:
        _check_declared("semantic", concat_channels, context_dim, vector_dim, produced, why)
        self.concat_channels, self.context_dim, self.vector_dim = produced, None, None

    def per_pixel(self, seg: torch.Tensor) -> torch.Tensor:
        """(B, H, W) labels -> (B, K, H, W) one-hot."""
        return F.one_hot(seg, self.num_classes).permute(0, 3, 1, 2).float()  # (B, H, W, K) -> (B, K, H, W)

    def labels(self, batch: dict[str, Any]) -> torch.Tensor:
        seg = batch.get("mask")
        if seg is None:
            raise DataError(
                f"conditioner=semantic needs batch['mask'] (B, H, W) int64 segmentation, but the batch has keys "
                f"{sorted(batch)}: use data=shapes (its masks: 0 background, 1 + kind)"
            )
        seg = seg.long()
        if seg.dim() == 4 and seg.shape[1] == 1:
            seg = seg[:, 0]  # (B, 1, H, W) -> (B, H, W)
        if seg.dim() != 3:
            raise DataError(f"batch['mask'] must be (B, H, W), got shape {tuple(seg.shape)}")
        if seg.numel() and (seg.min() < 0 or seg.max() >= self.num_classes):
            raise DataError(
                f"segmentation label out of range [0, {self.num_classes}) "
                f"(conditioner.num_classes={self.num_classes}): "
                f"got min {int(seg.min())}, max {int(seg.max())}"
            )
        return seg

    def encode(self, batch: dict[str, Any], drop_mask: torch.Tensor | None) -> Conditioning:
        seg = self.labels(batch)  # (B, H, W)
        h, w = seg.shape[-2] // self.downsample_factor, seg.shape[-1] // self.downsample_factor
        concat = F.interpolate(self.per_pixel(seg), size=(h, w), mode="area")  # (B, K|E, h, w)
        return Conditioning(concat=zero_dropped(concat, drop_mask))

    @torch.no_grad()
    def visualize(self, batch: dict[str, Any]) -> torch.Tensor:
        """The map in a fixed palette: (B, 3, H, W) in [-1, 1] (grey when the images have one channel)."""
        seg = self.labels(batch)
        palette = _PALETTE.to(seg.device)
        colours = palette[seg % len(palette)].permute(0, 3, 1, 2)  # (B, H, W, 3) -> (B, 3, H, W)
        image = batch.get("image")
        if image is not None and image.shape[1] == 1:
            colours = colours.mean(dim=1, keepdim=True)  # (B, 1, H, W)
        return colours * 2 - 1


class EmbeddedSemanticMapConditioner(SemanticMapConditioner):
    """Semantic synthesis with a learned ``embed_dim``-d embedding per class, area-averaged to the latent size:
    the concat has ``embed_dim`` channels."""

    mode_name = "embed"

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        downsample_factor: int = 4,
        drop_prob: float = 0.0,
        concat_channels: int = 0,
        context_dim: int | None = None,
        vector_dim: int | None = None,
        mode: str | None = None,
    ) -> None:
        if embed_dim is None or int(embed_dim) < 1:
            raise ConfigError(f"conditioner.embed_dim={embed_dim} must be >= 1 (the channels of the class embedding)")
        Conditioner.__init__(self, drop_prob=drop_prob)  # not the one-hot's __init__: it declares its channels
        self._set_map(num_classes, downsample_factor, mode)
        self._declare(int(embed_dim), "embedding: embed_dim channels", concat_channels, context_dim, vector_dim)
        self.embedding = nn.Embedding(self.num_classes, int(embed_dim))

    def per_pixel(self, seg: torch.Tensor) -> torch.Tensor:
        """(B, H, W) labels -> (B, E, H, W) class embeddings."""
        return self.embedding(seg).permute(0, 3, 1, 2)  # (B, H, W, E) -> (B, E, H, W)
