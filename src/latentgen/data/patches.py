"""Random crops of the natural photographs bundled inside scikit-image (no download).

Every source image is cut in two along its longer side: the first ``1 - val_fraction`` of it feeds
``train``, the rest ``val``, so the splits never share a pixel. Crops of ``crop_size`` (default
``2 * resolution``) are resized to ``resolution``. ``val`` crop ``i`` is fixed by ``(seed, i)``;
``train`` crops are random per access (see :mod:`latentgen.data.base` for how they are seeded).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from latentgen.data.base import PURPOSE_AUGMENT, SPLIT_CODE, ImageDataset
from latentgen.data.transforms import check_fraction, match_channels, to_tensor
from latentgen.errors import ConfigError, DataError

#: skimage.data loaders that ship inside the wheel (no pooch download). stereo_motorcycle returns a
#: tuple (left, right, disparity): the left view is used.
COLOUR_IMAGES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "stereo_motorcycle",
    "colorwheel",
)
GRAY_IMAGES = ("camera", "brick", "grass", "gravel", "moon", "coins")
ALL_IMAGES = COLOUR_IMAGES + GRAY_IMAGES
_MAX_TRIES = 8


@functools.lru_cache(maxsize=None)
def load_skimage(name: str) -> np.ndarray:
    """One bundled skimage image as uint8 ``(H, W)`` or ``(H, W, 3)``. Raises whatever skimage raises."""
    import skimage.data

    loader = getattr(skimage.data, name, None)
    if loader is None:
        raise AttributeError(f"skimage.data has no image {name!r}")
    img = loader()
    if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity)
        img = img[0]
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise TypeError(f"skimage.data.{name}() gave dtype {img.dtype}, expected uint8")
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]  # (H, W, 4) -> (H, W, 3): drop alpha
    if img.ndim not in (2, 3):
        raise TypeError(f"skimage.data.{name}() gave shape {img.shape}")
    img = np.ascontiguousarray(img)
    img.setflags(write=False)  # shared by every dataset of this process through the cache
    return img


@dataclass(frozen=True)
class _Region:
    name: str
    pixels: np.ndarray  # (h, w, C) uint8, already channel-matched; a view into the source image


class PatchesDataset(ImageDataset):
    """Crops of skimage's bundled photographs. No labels (``num_classes`` is None).

    Args:
        resolution, channels, split, seed: see :class:`ImageDataset`. Gray images are repeated to
            RGB for ``channels=3``; colour images become luma for ``channels=1``.
        images: names of ``skimage.data`` images (default: all of :data:`ALL_IMAGES`). Any that
            fails to load is skipped with a warning; none left -> DataError.
        num_train, num_val: the length of each split (crops are drawn, so any length works).
        crop_size: side of the crop before it is resized to ``resolution`` (default 2*resolution).
            A region smaller than the crop gets the largest square crop it holds.
        scale_jitter: train only: the crop side is multiplied by U(1 - j, 1 + j).
        flip: train only: random horizontal flips.
        val_fraction: the share of every image's longer side reserved for ``val``.
        min_std: a crop whose pixel std (0..255 scale) is below this is redrawn (up to a few
            times): the black borders of retina, colorwheel, moon... would otherwise be frequent.

    The source image of a crop is chosen uniformly (not by area: retina alone is 40% of the pixels).
    """

    def __init__(
        self,
        resolution: int = 32,
        channels: int = 3,
        split: str = "train",
        seed: int = 0,
        images: Sequence[str] | None = None,
        num_train: int = 10000,
        num_val: int = 500,
        crop_size: int | None = None,
        scale_jitter: float = 0.0,
        flip: bool = True,
        val_fraction: float = 0.2,
        min_std: float = 4.0,
    ) -> None:
        super().__init__(resolution=resolution, channels=channels, split=split, seed=seed)
        for key, value in (("num_train", num_train), ("num_val", num_val)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"PatchesDataset: data.dataset.{key}={value!r} must be a positive integer.")
        self.crop_size = int(crop_size) if crop_size is not None else 2 * self.resolution
        if self.crop_size < 1:
            raise ConfigError(f"PatchesDataset: data.dataset.crop_size={crop_size!r} must be positive (or null).")
        self.scale_jitter = check_fraction("PatchesDataset", "data.dataset.scale_jitter", scale_jitter)
        self.val_fraction = check_fraction(
            "PatchesDataset", "data.dataset.val_fraction", val_fraction, allow_zero=False
        )
        self.flip = bool(flip)
        self.min_std = float(min_std)
        self.num_train, self.num_val = int(num_train), int(num_val)
        names = list(ALL_IMAGES if images is None else images)
        if not names:
            raise ConfigError(
                "PatchesDataset: data.dataset.images is empty; list skimage.data names or use null (all)."
            )
        unknown = [n for n in names if n not in ALL_IMAGES]
        if unknown:
            raise ConfigError(
                f"PatchesDataset: data.dataset.images has {unknown}, which are not bundled skimage images "
                f"(the others would need a download); choose from {list(ALL_IMAGES)}."
            )
        self.regions: list[_Region] = []
        self.failed: dict[str, str] = {}
        for name in names:
            try:
                src = load_skimage(name)
            except Exception as err:  # a broken or missing image must not stop the others
                self.failed[name] = f"{type(err).__name__}: {err}"
                warnings.warn(f"PatchesDataset: skipping skimage.data.{name}: {err}", stacklevel=2)
                continue
            src = match_channels(src, self.channels)  # (H, W[, C]) -> (H, W, channels)
            self.regions.append(_Region(name, self._split_region(src)))
        if not self.regions:
            raise DataError(
                f"PatchesDataset: none of the skimage images {names} could be loaded ({self.failed}); "
                "check the scikit-image install (`python -c 'import skimage.data as d; d.astronaut()'`) "
                "or use data=digits / data=shapes."
            )
        self.image_names = [r.name for r in self.regions]

    def _split_region(self, src: np.ndarray) -> np.ndarray:
        """The part of ``src`` that belongs to this split: cut along the longer side."""
        h, w = src.shape[:2]
        axis = 0 if h > w else 1
        length = src.shape[axis]
        cut = int(round(length * (1.0 - self.val_fraction)))
        cut = min(max(cut, 1), length - 1)
        keep = slice(0, cut) if self.split == "train" else slice(cut, length)
        return src[keep] if axis == 0 else src[:, keep]

    def __len__(self) -> int:
        return self.num_train if self.split == "train" else self.num_val

    def _get(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        if rng is None:  # val: fixed by (seed, index)
            rng = np.random.default_rng([PURPOSE_AUGMENT, self.seed, SPLIT_CODE[self.split], index, 0])
            jitter, flip = 0.0, False
        else:
            jitter, flip = self.scale_jitter, self.flip
        for _ in range(_MAX_TRIES):  # nearly flat crops (black borders of retina, colorwheel...) are redrawn
            region = self.regions[int(rng.integers(len(self.regions)))].pixels
            h, w = region.shape[:2]
            side = self.crop_size
            if jitter > 0:
                side = int(round(side * rng.uniform(1.0 - jitter, 1.0 + jitter)))
            side = max(1, min(side, h, w))
            top = int(rng.integers(0, h - side + 1))
            left = int(rng.integers(0, w - side + 1))
            crop = region[top : top + side, left : left + side]  # (side, side, C)
            if float(crop.std()) >= self.min_std:
                break
        if flip and rng.random() < 0.5:
            crop = crop[:, ::-1]
        if side != self.resolution:
            pil = Image.fromarray(np.ascontiguousarray(crop[:, :, 0] if self.channels == 1 else crop))
            crop = np.asarray(pil.resize((self.resolution, self.resolution), Image.Resampling.BICUBIC))
        return {"image": to_tensor(np.ascontiguousarray(crop))}
