"""Small, dependency-light image helpers shared by the datasets.

Everything here works on PIL images or uint8 numpy arrays and ends in the one tensor format the
rest of latentgen expects: float32 ``(C, H, W)`` in ``[-1, 1]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from latentgen.errors import ConfigError

SPLITS = ("train", "val")

# ITU-R BT.601 luma, the weights PIL uses for "RGB" -> "L".
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def check_common(owner: str, *, resolution: Any, channels: Any, split: Any) -> tuple[int, int, str]:
    """Validate the arguments every dataset takes; raise ConfigError naming the bad key."""
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or int(resolution) < 1:
        raise ConfigError(
            f"{owner}: data.resolution={resolution!r} is not a positive integer; set data.resolution (e.g. 32)."
        )
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ConfigError(f"{owner}: data.channels={channels!r} is not supported; set data.channels to 1 or 3.")
    if split not in SPLITS:
        raise ConfigError(f"{owner}: split={split!r} is not one of {SPLITS}; the DataModule passes 'train' or 'val'.")
    return int(resolution), int(channels), str(split)


def check_fraction(owner: str, key: str, value: Any, *, allow_zero: bool = True) -> float:
    """A fraction in [0, 1) (or (0, 1)); ConfigError naming ``key`` otherwise."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    lo_ok = v >= 0.0 if allow_zero else v > 0.0
    if not (lo_ok and v < 1.0):
        bound = "[0, 1)" if allow_zero else "(0, 1)"
        raise ConfigError(f"{owner}: {key}={value!r} must lie in {bound}; e.g. set {key}=0.1.")
    return v


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W)`` or ``(H, W, C)`` -> float32 ``(C, H, W)`` in ``[-1, 1]``."""
    if arr.dtype != np.uint8:
        raise TypeError(f"to_tensor expects uint8, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]  # (H, W) -> (H, W, 1)
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr, order="C")  # torch.from_numpy wants a writable, contiguous array
    t = torch.from_numpy(arr).permute(2, 0, 1)  # (H, W, C) -> (C, H, W)
    return t.to(torch.float32).div_(127.5).sub_(1.0)


def match_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """uint8 ``(H, W)`` / ``(H, W, 1)`` / ``(H, W, 3)`` -> ``(H, W, channels)``.

    Gray -> RGB repeats the plane; RGB -> gray uses BT.601 luma (as PIL's ``convert("L")``).
    """
    if arr.ndim == 2:
        arr = arr[:, :, None]  # (H, W) -> (H, W, 1)
    have = arr.shape[2]
    if have == channels:
        return arr
    if have == 1 and channels == 3:
        return np.repeat(arr, 3, axis=2)  # (H, W, 1) -> (H, W, 3)
    if have == 3 and channels == 1:
        gray = arr.astype(np.float32) @ _LUMA  # (H, W, 3) @ (3,) -> (H, W)
        return np.clip(np.rint(gray), 0, 255).astype(np.uint8)[:, :, None]  # (H, W, 1)
    raise ValueError(f"cannot convert {have} channels to {channels}")


def _sixteen_bit_to_8(arr: np.ndarray) -> np.ndarray:
    """Full-range 16-bit values (0..65535) -> uint8 with rounding (65535 -> 255)."""
    return np.clip(np.rint(arr.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)


def normalize_mode(img: Image.Image, channels: int) -> Image.Image:
    """Any PIL image -> mode ``"RGB"`` (channels=3) or ``"L"`` (channels=1).

    - EXIF orientation is applied.
    - Alpha (RGBA, LA, PA, palette with transparency) is composited onto white.
    - 16-bit (``I;16*``) is scaled to 8 bit by /257; 32-bit ``I`` is treated as 16-bit when its
      maximum exceeds 255 (PIL opens some 16-bit files as ``I``), else as 8-bit values.
      Float ``F`` is taken as [0, 1] when its max is <= 1, else as [0, 255].
    - CMYK, YCbCr, LAB, HSV, 1-bit and palettes go through PIL's own conversion.
    """
    img = ImageOps.exif_transpose(img)
    target = "RGB" if channels == 3 else "L"
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img)
        if mode == "I" and arr.size and int(arr.max()) <= 255:
            arr8 = np.clip(arr, 0, 255).astype(np.uint8)
        else:
            arr8 = _sixteen_bit_to_8(arr)
        img = Image.fromarray(arr8, mode="L")
    elif mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if (arr.size and float(np.nanmax(arr)) <= 1.0) else 1.0
        img = Image.fromarray(np.clip(np.rint(np.nan_to_num(arr) * scale), 0, 255).astype(np.uint8), mode="L")
    elif mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    elif mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    if img.mode != target:
        img = img.convert(target)
    return img


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Resize so that the shorter side equals ``size`` (bicubic; PIL antialiases when shrinking)."""
    w, h = img.size
    if min(w, h) == size:
        return img
    if w <= h:
        new_w, new_h = size, max(size, round(h * size / w))
    else:
        new_w, new_h = max(size, round(w * size / h)), size
    return img.resize((new_w, new_h), Image.Resampling.BICUBIC)


def crop_box(width: int, height: int, size: int, rng: np.random.Generator | None) -> tuple[int, int, int, int]:
    """A ``size`` x ``size`` box inside ``width`` x ``height``: centred, or uniform when ``rng`` is given."""
    if rng is None:
        left, top = (width - size) // 2, (height - size) // 2
    else:
        left = int(rng.integers(0, width - size + 1))
        top = int(rng.integers(0, height - size + 1))
    return left, top, left + size, top + size
