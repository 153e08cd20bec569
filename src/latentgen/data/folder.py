"""Any directory of images (recursive), with optional subfolder labels and sidecar captions."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from latentgen.data.base import ImageDataset, split_indices
from latentgen.data.transforms import check_fraction, crop_box, normalize_mode, resize_shorter, to_tensor
from latentgen.errors import ConfigError, DataError

DEFAULT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_MAX_WARNINGS = 20  # per-file warnings before they are summarised


class DataWarning(UserWarning):
    """A file was skipped or a sample is incomplete; training continues."""


def _walk(base: Path) -> tuple[list[Path], set[Path]]:
    """All non-hidden files under ``base`` (symlinked folders followed once), and the .txt ones."""
    files: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    files.sort()
    texts = {f for f in files if f.suffix.lower() == ".txt"}
    return files, texts


class ImageFolderDataset(ImageDataset):
    """Images found recursively under ``root``.

    Args:
        root: a folder. If it holds both ``train/`` and ``val/`` folders they are the splits;
            otherwise every image under ``root`` is split by ``seed`` and ``val_fraction``
            (stratified by class when labelled).
        resolution, channels, split, seed: see :class:`ImageDataset`. Grayscale, RGBA/LA/palette
            (composited on white), 16-bit, CMYK... are converted to RGB, or to L for ``channels=1``.
        labels_from_subfolders: the label is the first-level subfolder (classes: sorted names,
            taken from ``train/`` when the split folders exist).
        crop: ``center`` or ``random`` (training split only; val is always centre-cropped) after
            the shorter side is resized to ``resolution``.
        flip: random horizontal flips on the training split.
        extensions: accepted suffixes, case-insensitive (default png, jpg, jpeg, webp, bmp).
        validate: check every file's header with PIL ``verify()`` at construction (cheap, reads
            no pixels); unreadable files are skipped with a warning. Turn off for huge folders.
        max_bad_fraction: more skipped files than this fraction -> DataError.

    A sidecar ``<stem>.txt`` next to an image is its caption. If any image of the split has one,
    every sample carries ``caption`` ("" where the sidecar is missing) so that batches collate.
    A file that passes ``verify()`` but fails to decode is replaced by the next good one, counted
    in ``num_skipped`` (per process: each DataLoader worker counts its own) and warned about.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        resolution: int = 256,
        channels: int = 3,
        split: str = "train",
        seed: int = 0,
        labels_from_subfolders: bool = False,
        crop: str = "center",
        flip: bool = False,
        val_fraction: float = 0.1,
        extensions: Sequence[str] | None = None,
        validate: bool = True,
        max_bad_fraction: float = 0.05,
    ) -> None:
        super().__init__(resolution=resolution, channels=channels, split=split, seed=seed)
        if crop not in ("center", "random"):
            raise ConfigError(f"ImageFolderDataset: data.dataset.crop={crop!r}; use 'center' or 'random'.")
        self.crop, self.flip = crop, bool(flip)
        self.val_fraction = check_fraction("ImageFolderDataset", "data.dataset.val_fraction", val_fraction)
        self.max_bad_fraction = check_fraction("ImageFolderDataset", "data.dataset.max_bad_fraction", max_bad_fraction)
        exts = DEFAULT_EXTENSIONS if extensions is None else extensions
        self.extensions = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in exts)
        self.labels_from_subfolders = bool(labels_from_subfolders)

        if root is None or str(root) in ("", "???"):
            raise ConfigError("ImageFolderDataset: data.root is not set; pass data.root=/path/to/images.")
        self.root = Path(root).expanduser()
        if not self.root.exists():
            raise DataError(
                f"ImageFolderDataset: data.root='{self.root}' does not exist; set data.root to a folder of images."
            )
        if not self.root.is_dir():
            raise DataError(f"ImageFolderDataset: data.root='{self.root}' is a file, not a folder of images.")

        split_dirs = (self.root / "train").is_dir() and (self.root / "val").is_dir()
        self.split_dirs = split_dirs
        base = self.root / self.split if split_dirs else self.root
        files, texts = _walk(base)
        images = [f for f in files if f.suffix.lower() in self.extensions]
        if not images:
            found = sorted({f.suffix.lower() or f.name for f in files})[:10]
            raise DataError(
                f"ImageFolderDataset: no images with extensions {list(self.extensions)} under '{base}' "
                f"(found {len(files)} other files{', e.g. ' + str(found) if found else ''}); "
                "point data.root at a folder of images or set data.dataset.extensions."
            )

        labels: np.ndarray | None = None
        if self.labels_from_subfolders:
            class_base = self.root / "train" if split_dirs else self.root
            self.class_names = self._class_names(class_base)
            labels = self._labels(images, base)
            self.num_classes = len(self.class_names)

        if not split_dirs:
            part = split_indices(len(images), self.val_fraction, self.seed, labels)[self.split]
            if len(part) == 0:
                raise DataError(
                    f"ImageFolderDataset: split '{self.split}' of '{self.root}' is empty ({len(images)} images, "
                    f"data.dataset.val_fraction={self.val_fraction}); add images or change val_fraction, "
                    "or provide train/ and val/ folders."
                )
            images = [images[i] for i in part]
            labels = labels[part] if labels is not None else None

        self.bad_files: dict[str, str] = {}
        self.num_total = len(images)
        if validate:
            keep = []
            for i, path in enumerate(images):
                err = _verify(path)
                if err is None:
                    keep.append(i)
                else:
                    self._record_bad(path, err)
            images = [images[i] for i in keep]
            labels = labels[keep] if labels is not None else None
            self._check_bad_fraction()
            if not images:
                raise DataError(f"ImageFolderDataset: every image under '{base}' is unreadable; see the warnings.")

        self.files: list[Path] = images
        self.labels = torch.from_numpy(labels) if labels is not None else None
        self.captions: list[Path | None] | None = None
        sidecars = [p.with_suffix(".txt") for p in images]
        if any(s in texts for s in sidecars):
            self.captions = [s if s in texts else None for s in sidecars]
            missing = sum(c is None for c in self.captions)
            if missing:
                warnings.warn(
                    f"ImageFolderDataset: {missing} of {len(images)} images under '{base}' have no sidecar "
                    "<stem>.txt caption; they get the empty caption ''.",
                    DataWarning,
                    stacklevel=2,
                )

    # -- construction helpers -------------------------------------------------------------------

    def _class_names(self, class_base: Path) -> list[str]:
        names = []
        for d in sorted(p for p in class_base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            files, _ = _walk(d)
            if any(f.suffix.lower() in self.extensions for f in files):
                names.append(d.name)
        if not names:
            raise DataError(
                f"ImageFolderDataset: data.dataset.labels_from_subfolders=true but '{class_base}' has no "
                "subfolders with images; put each class in its own subfolder or set it to false."
            )
        return names

    def _labels(self, images: list[Path], base: Path) -> np.ndarray:
        assert self.class_names is not None
        index = {name: i for i, name in enumerate(self.class_names)}
        labels = np.empty(len(images), dtype=np.int64)
        for i, path in enumerate(images):
            rel = path.relative_to(base).parts
            if len(rel) < 2:
                raise DataError(
                    f"ImageFolderDataset: '{path}' lies directly in '{base}' but "
                    "data.dataset.labels_from_subfolders=true needs every image inside a class subfolder; "
                    "move it or set labels_from_subfolders=false."
                )
            if rel[0] not in index:
                raise DataError(
                    f"ImageFolderDataset: class folder '{rel[0]}' of '{path}' does not exist under "
                    f"'{self.root / 'train'}'; the classes are {self.class_names}."
                )
            labels[i] = index[rel[0]]
        return labels

    def _record_bad(self, path: Path, err: str) -> None:
        self.bad_files[str(path)] = err
        n = len(self.bad_files)
        if n <= _MAX_WARNINGS:
            warnings.warn(f"ImageFolderDataset: skipping unreadable image '{path}': {err}", DataWarning, stacklevel=3)
        elif n == _MAX_WARNINGS + 1:
            warnings.warn(
                "ImageFolderDataset: more unreadable images; further ones are only counted (num_skipped).",
                DataWarning,
                stacklevel=3,
            )

    def _check_bad_fraction(self) -> None:
        n_bad = len(self.bad_files)
        if n_bad and n_bad > self.max_bad_fraction * self.num_total:
            examples = list(self.bad_files.items())[:5]
            listed = "; ".join(f"'{p}' ({e})" for p, e in examples)
            raise DataError(
                f"ImageFolderDataset: {n_bad} of {self.num_total} images under '{self.root}' "
                f"({self.split}) are unreadable, more than data.dataset.max_bad_fraction="
                f"{self.max_bad_fraction}; e.g. {listed}. Remove or fix them, or raise max_bad_fraction."
            )

    # -- access ---------------------------------------------------------------------------------

    @property
    def num_skipped(self) -> int:
        """Files skipped so far in this process (bad headers + failed decodes)."""
        return len(self.bad_files)

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, path: Path, rng: np.random.Generator | None) -> np.ndarray:
        with Image.open(path) as img:
            w, h = img.size
            scale = self.resolution / min(w, h)
            if scale < 1:  # JPEG: decode at a reduced scale that still covers the target
                img.draft(None, (math.ceil(w * scale), math.ceil(h * scale)))
            img.load()
            img = normalize_mode(img, self.channels)
        img = resize_shorter(img, self.resolution)
        random_crop = rng if (self.crop == "random" and rng is not None) else None
        img = img.crop(crop_box(img.width, img.height, self.resolution, random_crop))
        if self.flip and rng is not None and rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return np.asarray(img)

    def _get(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        n = len(self.files)
        for step in range(n):
            i = (index + step) % n
            path = self.files[i]
            if str(path) in self.bad_files:
                continue
            try:
                pixels = self._load(path, rng)
            except Exception as err:  # passes verify() but fails to decode: skip, count, go on
                self._record_bad(path, f"{type(err).__name__}: {err}")
                self._check_bad_fraction()
                continue
            sample: dict[str, Any] = {"image": to_tensor(pixels)}
            if self.labels is not None:
                sample["label"] = self.labels[i].clone()
            if self.captions is not None:
                sidecar = self.captions[i]
                sample["caption"] = sidecar.read_text(encoding="utf-8", errors="replace").strip() if sidecar else ""
            return sample
        raise DataError(f"ImageFolderDataset: no readable image left under '{self.root}' ({self.split}).")


def _verify(path: Path) -> str | None:
    """None when PIL can identify and verify the file, else the error text."""
    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    return None
