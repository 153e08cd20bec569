"""``ImageDataModule``: one LightningDataModule for every dataset, built from Hydra.

The training order is a pure function of the seeds and the epoch: the train loader is a
:class:`~latentgen.data.resumable_loader.ResumableDataLoader` (its position travels in checkpoints, so a
resumed run continues mid-epoch with the next unseen batch) over an
:class:`~latentgen.data.sampling.EpochShuffleSampler` (a permutation drawn from ``(seed, epoch)``, cut into
global batches, each DDP rank taking a contiguous slice of every global batch: a DDP run sees, step by step,
the same global batches as a one-device run with the same global batch size). Random augmentations are a
function of ``(dataset seed, index, epoch)`` because the sampler yields ``(index, epoch)`` keys to datasets
that accept them (``epoch_keys``).
Nothing depends on the global RNG, the number of workers or ``persistent_workers``: a resumed run
sees the same data in every epoch as an uninterrupted one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from latentgen.data.resumable_loader import ResumableDataLoader, seed_worker
from latentgen.data.sampling import EpochShuffleSampler, mix_seed, positive_int
from latentgen.errors import ConfigError, DataError


class ImageDataModule(L.LightningDataModule):
    """Train/val loaders for any latentgen dataset.

    Args:
        dataset: a factory (Hydra ``_partial_: true``) called as ``dataset(split="train")`` and
            ``dataset(split="val")``.
        batch_size: the GLOBAL batch size, summed over DDP ranks; each rank loads
            ``batch_size // world_size`` (ConfigError when it does not divide).
        val_batch_size: global batch size for validation (default: ``batch_size``).
        num_workers, pin_memory, persistent_workers, drop_last: as for ``DataLoader``
            (``drop_last`` applies to training only; ``persistent_workers`` needs workers).
        seed: seeds the training order and the workers (``${oc.select:seed,0}`` in the configs).
        resolution, channels, num_classes: the values other configs interpolate as
            ``${data.resolution}`` etc. They are checked against the dataset (ConfigError on a
            mismatch); ``None`` means "take the dataset's".
        root: the image folder of ``data=folder`` (kept at the top of the data node so that the
            CLI override is ``data.root=...``; the dataset node interpolates it). Informational here.
        cache_latents: for latent models, encode the training split once with the first stage and
            train from the cached latents (the training root, ``latentgen.app.training``, builds the cache
            and calls :meth:`use_train_dataset`).
    """

    def __init__(
        self,
        dataset: Callable[..., Dataset],
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        val_batch_size: int | None = None,
        persistent_workers: bool = False,
        drop_last: bool = True,
        seed: int = 0,
        resolution: int | None = None,
        channels: int | None = None,
        num_classes: int | None = None,
        root: str | None = None,
        cache_latents: bool = False,
    ) -> None:
        super().__init__()
        if not callable(dataset):
            raise ConfigError(
                f"ImageDataModule: data.dataset must be a dataset factory (`_partial_: true`), got {type(dataset)}."
            )
        self.dataset_factory = dataset
        self.batch_size = positive_int("data.batch_size", batch_size)
        self.val_batch_size = (
            self.batch_size if val_batch_size is None else positive_int("data.val_batch_size", val_batch_size)
        )
        if isinstance(num_workers, bool) or not isinstance(num_workers, (int, np.integer)) or num_workers < 0:
            raise ConfigError(f"ImageDataModule: data.num_workers={num_workers!r} must be an integer >= 0.")
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self._resolution, self._channels, self._num_classes = resolution, channels, num_classes
        self.root = None if root is None else str(root)
        # Latent models only: train from first-stage latents encoded once (see data/latent_cache.py).
        self.cache_latents = bool(cache_latents)
        # Cheap early check of the factory's own keywords (Hydra's partial is a functools.partial).
        keywords = getattr(dataset, "keywords", None) or {}
        for key, want in (("resolution", resolution), ("channels", channels)):
            have = keywords.get(key)
            if want is not None and have is not None and int(have) != int(want):
                raise ConfigError(
                    f"ImageDataModule: data.{key}={want} but data.dataset.{key}={have}; set only data.{key} "
                    f"(the dataset node interpolates it as ${{..{key}}})."
                )
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.per_rank_batch_size: int | None = None
        self.per_rank_val_batch_size: int | None = None
        self.save_hyperparameters(ignore=["dataset"], logger=False)

    # -- properties other components read ----------------------------------------------------

    def _dataset_attr(self, name: str) -> Any:
        for ds in (self.train_dataset, self.val_dataset):
            if ds is not None and hasattr(ds, name):
                return getattr(ds, name)
        keywords = getattr(self.dataset_factory, "keywords", None) or {}
        return keywords.get(name)

    @property
    def resolution(self) -> int | None:
        return self._resolution if self._resolution is not None else self._dataset_attr("resolution")

    @property
    def channels(self) -> int | None:
        return self._channels if self._channels is not None else self._dataset_attr("channels")

    @property
    def num_classes(self) -> int | None:
        return self._num_classes if self._num_classes is not None else self._dataset_attr("num_classes")

    @property
    def class_names(self) -> list[str] | None:
        return self._dataset_attr("class_names")

    # -- setup ------------------------------------------------------------------------------------

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer  # set by the Trainer; None for a detached DataModule
        if trainer is None:
            return 1, 0
        return int(getattr(trainer, "world_size", 1) or 1), int(getattr(trainer, "global_rank", 0) or 0)

    def _build(self, split: str) -> Dataset:
        ds = self.dataset_factory(split=split)
        for key, want in (("resolution", self._resolution), ("channels", self._channels)):
            have = getattr(ds, key, None)
            if want is not None and have is not None and int(have) != int(want):
                raise ConfigError(
                    f"ImageDataModule: data.{key}={want} but the {split} dataset has {key}={have}; "
                    f"make data.dataset.{key} interpolate ${{..{key}}}."
                )
        have_classes = getattr(ds, "num_classes", None)
        if self._num_classes is not None and have_classes != self._num_classes:
            raise ConfigError(
                f"ImageDataModule: data.num_classes={self._num_classes} but the {split} dataset "
                f"({type(ds).__name__}) has num_classes={have_classes}; set data.num_classes="
                f"{'null' if have_classes is None else have_classes}."
            )
        if len(ds) == 0:  # type: ignore[arg-type]
            raise DataError(f"ImageDataModule: the {split} split of {type(ds).__name__} is empty; check data.dataset.")
        return ds

    def _per_rank(self, key: str, global_batch: int, world: int) -> int:
        if global_batch % world:
            raise ConfigError(
                f"ImageDataModule: {key}={global_batch} is the global batch size and must be divisible by the "
                f"world size {world} (devices x nodes); set {key} to a multiple of {world}."
            )
        return global_batch // world

    def setup(self, stage: str | None = None) -> None:
        world, _ = self._world()
        self.per_rank_batch_size = self._per_rank("data.batch_size", self.batch_size, world)
        self.per_rank_val_batch_size = self._per_rank("data.val_batch_size", self.val_batch_size, world)
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._build("train")
        if stage in (None, "fit", "validate", "test", "predict") and self.val_dataset is None:
            self.val_dataset = self._build("val")
        if self.train_dataset is not None and self.drop_last and len(self.train_dataset) < self.per_rank_batch_size:
            raise ConfigError(
                f"ImageDataModule: the train split has {len(self.train_dataset)} samples, fewer than one "
                f"per-rank batch ({self.per_rank_batch_size}) with drop_last=true; lower data.batch_size."
            )

    def use_train_dataset(self, dataset: Dataset) -> None:
        """Replace the training split (e.g. by a :class:`~latentgen.data.latent_cache.CachedLatentDataset`)."""
        self.train_dataset = dataset

    # -- loaders ----------------------------------------------------------------------------------

    def _loader_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = dict(num_workers=self.num_workers, pin_memory=self.pin_memory)
        if self.num_workers > 0:
            kw.update(persistent_workers=self.persistent_workers, worker_init_fn=seed_worker)
        return kw

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        assert self.train_dataset is not None and self.per_rank_batch_size is not None
        world, rank = self._world()
        sampler = EpochShuffleSampler(
            len(self.train_dataset),
            self.seed,
            epoch_keys=getattr(self.train_dataset, "epoch_keys", False),
            num_replicas=world,
            rank=rank,
            batch_size=self.per_rank_batch_size,
            drop_last=self.drop_last,
        )
        return ResumableDataLoader(
            self.train_dataset,
            batch_size=self.per_rank_batch_size,
            sampler=sampler,
            drop_last=self.drop_last,
            generator=torch.Generator().manual_seed(mix_seed(self.seed, rank, 1)),  # worker base seeds
            **self._loader_kwargs(),
        )

    def val_dataloader(self) -> DataLoader:
        if self.val_dataset is None:
            self.setup("validate")
        assert self.val_dataset is not None and self.per_rank_val_batch_size is not None
        _, rank = self._world()
        return DataLoader(
            self.val_dataset,
            batch_size=self.per_rank_val_batch_size,
            shuffle=False,
            drop_last=False,
            generator=torch.Generator().manual_seed(mix_seed(self.seed, rank, 2)),
            **self._loader_kwargs(),
        )

    def test_dataloader(self) -> DataLoader:
        """The val split (the embedded datasets have no separate test split)."""
        return self.val_dataloader()

    # -- helpers ----------------------------------------------------------------------------------

    def dataset(self, split: str) -> Dataset:
        """The dataset of ``split`` ("train" or "val"), built on first use."""
        if split == "train":
            if self.train_dataset is None:
                self.train_dataset = self._build("train")
            return self.train_dataset
        if split == "val":
            if self.val_dataset is None:
                self.val_dataset = self._build("val")
            return self.val_dataset
        raise ConfigError(f"ImageDataModule: split={split!r}; use 'train' or 'val'.")

    def fixed_batch(self, n: int, split: str = "val") -> dict[str, Any]:
        """The first ``n`` samples of ``split`` collated (train samples as seen in epoch 0).

        Always the same samples: meant for sample and reconstruction grids.
        """
        ds = self.dataset(split)
        n = positive_int("n", n)
        available = len(ds)  # type: ignore[arg-type]
        if n > available:
            raise ConfigError(
                f"ImageDataModule.fixed_batch: asked for {n} samples but the {split} split has {available}; "
                "lower the number of grid samples."
            )
        keyed = getattr(ds, "epoch_keys", False)
        return default_collate([ds[(i, 0) if keyed else i] for i in range(n)])

    def __str__(self) -> str:
        return (
            f"ImageDataModule(dataset={_name(self.dataset_factory)}, batch_size={self.batch_size}, "
            f"resolution={self.resolution}, channels={self.channels}, num_classes={self.num_classes})"
        )


def _name(factory: Any) -> str:
    if isinstance(factory, functools.partial):
        return getattr(factory.func, "__name__", repr(factory.func))
    return getattr(factory, "__name__", repr(factory))
