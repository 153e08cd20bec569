"""Datasets and the LightningDataModule.

Embedded datasets (no download): :class:`DigitsDataset` (scikit-learn digits),
:class:`ShapesDataset` (procedural shapes with captions and masks), :class:`PatchesDataset`
(crops of scikit-image's bundled photographs); and :class:`ImageFolderDataset` for any folder.
A sample is ``{"image": (C, H, W) float32 in [-1, 1], "label"?: int64, "caption"?: str,
"mask"?: (H, W) int64}``.

``ImageDataModule`` is imported lazily (it pulls in Lightning, which takes seconds), so that
``from latentgen.data import ShapesDataset`` stays cheap; Hydra's ``_target_:
latentgen.data.ImageDataModule`` works as usual.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from latentgen.data.base import ImageDataset
from latentgen.data.digits import DigitsDataset
from latentgen.data.folder import DataWarning, ImageFolderDataset
from latentgen.data.patches import PatchesDataset
from latentgen.data.shapes import ATTRIBUTES, ShapesDataset

if TYPE_CHECKING:
    from latentgen.data.datamodule import ImageDataModule
    from latentgen.data.resumable_loader import seed_worker
    from latentgen.data.sampling import EpochShuffleSampler

__all__ = [
    "ATTRIBUTES",
    "DataWarning",
    "DigitsDataset",
    "EpochShuffleSampler",
    "ImageDataModule",
    "ImageDataset",
    "ImageFolderDataset",
    "PatchesDataset",
    "ShapesDataset",
    "seed_worker",
]

# name -> the module that defines it
_LAZY = {
    "ImageDataModule": "latentgen.data.datamodule",
    "EpochShuffleSampler": "latentgen.data.sampling",
    "seed_worker": "latentgen.data.resumable_loader",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'latentgen.data' has no attribute {name!r}")
