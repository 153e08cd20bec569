"""``ImageDataModule``: one LightningDataModule for every dataset, built from Hydra.

The training order is a pure function of the seeds and the epoch. :class:`EpochShuffleSampler`
draws a permutation from ``(seed, epoch)``; Lightning calls its ``set_epoch`` at every epoch start.
The permutation is cut into global batches and each DDP rank takes a contiguous slice of every
global batch (the sampler is a ``DistributedSampler``, so Lightning does not wrap it): a DDP run
sees, step by step, the same global batches as a one-device run with the same global batch size.
The train loader (:class:`ResumableDataLoader`) stores its position in checkpoints, so a resumed
run continues mid-epoch with the next unseen batch. Random augmentations are a function of
``(dataset seed, index, epoch)`` because the sampler yields ``(index, epoch)`` keys to datasets that
accept them (``epoch_keys``).
Nothing depends on the global RNG, the number of workers or ``persistent_workers``: a resumed run
sees the same data in every epoch as an uninterrupted one.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from latentgen.errors import ConfigError, DataError


class EpochShuffleSampler(DistributedSampler):
    """A permutation of ``range(n)`` drawn from ``seed`` and the epoch, cut into GLOBAL batches.

    The permutation is the same for every world size. It is cut into global batches of
    ``batch_size * num_replicas`` samples and rank ``r`` takes the ``r``-th contiguous slice of
    ``batch_size`` samples of every global batch, so the ranks of one optimizer step together see
    exactly the global batch a one-process run sees at that step (and in the same order).
    With ``drop_last`` only whole global batches are used; without it the last, partial global batch
    is padded (from the start of the permutation) to a multiple of ``num_replicas`` and split evenly.

    ``start_batch`` skips the first global batches of the current epoch: how a resumed run continues
    mid-epoch (:class:`ResumableDataLoader` sets it from the checkpoint). ``set_epoch`` to another
    epoch resets it to 0.

    Yields ``(index, epoch)`` when ``epoch_keys`` is true (see :mod:`latentgen.data.base`), else ints.
    A ``DistributedSampler`` subclass on purpose: Lightning then uses it as it is under DDP instead of
    wrapping it in a ``DistributedSamplerWrapper`` (which would re-shuffle and interleave the ranks).
    """

    def __init__(
        self,
        n: int,
        seed: int,
        epoch_keys: bool = False,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        batch_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        super().__init__(range(int(n)), num_replicas=int(num_replicas), rank=int(rank), shuffle=False, seed=int(seed))
        self.n, self.epoch_keys = int(n), bool(epoch_keys)
        self.batch_size = _positive_int("batch_size", batch_size)  # per rank
        self.drop_last = bool(drop_last)
        self.start_batch = 0

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self.start_batch = 0
        self.epoch = int(epoch)

    def _layout(self) -> tuple[int, int]:
        """(number of whole global batches, per-rank size of the last partial one or 0)."""
        full, rest = divmod(self.n, self.global_batch_size)
        if self.drop_last or rest == 0:
            return full, 0
        return full, -(-rest // self.num_replicas)  # ceil: padded to a multiple of num_replicas

    def batches_per_epoch(self) -> int:
        full, partial = self._layout()
        return full + (1 if partial else 0)

    def __len__(self) -> int:
        full, partial = self._layout()
        return full * self.batch_size + partial  # per rank, whole epoch (also when resuming mid-epoch)

    def __iter__(self) -> Iterator[Any]:
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
        order = torch.randperm(self.n, generator=g).tolist()
        full, partial = self._layout()
        gb, b, r = self.global_batch_size, self.batch_size, self.rank
        mine: list[int] = []
        for k in range(self.start_batch, full):
            mine += order[k * gb + r * b : k * gb + (r + 1) * b]
        if partial and self.start_batch <= full:
            tail = order[full * gb :]
            tail += order[: partial * self.num_replicas - len(tail)]  # pad (num_replicas > 1 only)
            mine += tail[r * partial : (r + 1) * partial]
        if self.epoch_keys:
            epoch = self.epoch
            return iter([(i, epoch) for i in mine])
        return iter(mine)


class ResumableDataLoader(DataLoader):
    """The training DataLoader: Lightning stores its position in checkpoints and restores it on resume.

    Lightning calls ``state_dict()`` of a train loader that has one when it saves a checkpoint and
    ``load_state_dict()`` before it iterates again, so ``ckpt_path=...`` continues mid-epoch with the
    next unseen global batch instead of restarting the epoch. The position is counted in global
    batches (the same on every rank) and stored with the global batch size, so a run can resume
    with another number of devices.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._position = 0  # global batches of the current epoch already yielded

    @property
    def _resumable(self) -> bool:
        # False when Lightning swapped the sampler (e.g. trainer.overfit_batches): a plain DataLoader then.
        return isinstance(self.sampler, EpochShuffleSampler)

    def __iter__(self) -> Iterator[Any]:
        self._position = self.sampler.start_batch if self._resumable else 0
        for batch in super().__iter__():
            self._position += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        if not self._resumable:
            return {}
        s = self.sampler
        return {"epoch": s.epoch, "samples": self._position * s.global_batch_size, "global_batch_size": s.global_batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not state or not self._resumable:
            return
        s = self.sampler
        epoch, start = int(state["epoch"]), int(state["samples"]) // s.global_batch_size
        if start >= s.batches_per_epoch():  # saved after the last batch of an epoch: continue with the next
            epoch, start = epoch + 1, 0
        s.set_epoch(epoch)
        s.start_batch = start
        self._position = start


def _mix(*words: int) -> int:
    """A 63-bit seed from integers (numpy SeedSequence: stable across machines and versions)."""
    entropy = [int(w) & 0xFFFFFFFFFFFFFFFF for w in words]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) >> 1


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed ``random`` and numpy from the seed torch gave this worker.

    torch seeds each worker with ``base_seed + worker_id`` and ``base_seed`` comes from the
    DataLoader's seeded ``generator``; third-party transforms that use ``random``/numpy's global
    RNG are thereby deterministic too. (latentgen's own datasets do not use global RNGs.)
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"ImageDataModule: {key}={value!r} must be a positive integer.")
    return int(value)


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
            train from the cached latents (``latentgen.run`` builds the cache and calls
            :meth:`use_train_dataset`).
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
        self.batch_size = _positive_int("data.batch_size", batch_size)
        self.val_batch_size = (
            self.batch_size if val_batch_size is None else _positive_int("data.val_batch_size", val_batch_size)
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
            generator=torch.Generator().manual_seed(_mix(self.seed, rank, 1)),  # worker base seeds
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
            generator=torch.Generator().manual_seed(_mix(self.seed, rank, 2)),
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
        n = _positive_int("n", n)
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
