"""Inpainting conditioner (LDM §4.5): ``cat(E((1 - m) * x), m_lat)`` with ``m`` a random box / brush-stroke
mask (1 = missing) drawn per sample from the step's generator, ``m_lat`` its area-average at latent size;
so ``concat_channels = latent_channels + 1`` (LDM's layout, in_channels = z + z + 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from latentgen.conditioning.base import Conditioner, Conditioning
from latentgen.conditioning.masks import MASK_KINDS, centre_box_masks, random_masks
from latentgen.errors import ConfigError, DataError
from latentgen.randomness import BatchRandomness
from latentgen.conditioning.concat import _check_declared, _FirstStageUser, read_images, zero_dropped


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
