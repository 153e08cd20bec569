"""Latent caching: encode the training split with the frozen first stage once, then train from disk.

With ``data.cache_latents=true`` a latent-model run encodes every training sample once (progress
bar), stores the regularizer's *input* ``encode_raw(x)`` — for KL that is mean and log-variance, so
posterior sampling stays possible — and trains from that file. When the dataset flips images at
random (``flip`` augmentation), the mirrored image is encoded too and each access picks one
orientation from ``(seed, index, epoch)``, like the image dataset would. Random *crops* cannot be
cached: the cache holds the dataset's deterministic view of each sample (what ``split="val"``-style
access returns), which the README states.

The cache file is keyed by a digest of (first-stage weights incl. latent scale, dataset config,
split, resolution); the key is also stored inside the file and compared on load, so a stale cache
(another autoencoder, other data) is never used silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from latentgen.checkpoint import load_checkpoint_file
from latentgen.data.base import PURPOSE_AUGMENT, split_key
from latentgen.errors import DataError
from latentgen.files import atomic_torch_save

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


def module_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state (names, shapes and bytes of every tensor, buffers included)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def cache_key(first_stage: torch.nn.Module, dataset_config: dict[str, Any], split: str) -> dict[str, Any]:
    return {
        "format": CACHE_FORMAT,
        "first_stage": module_digest(first_stage),
        "dataset": dataset_config,
        "split": split,
    }


def _key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _deterministic_sample(dataset: Dataset, index: int) -> dict[str, Any]:
    """The sample without random augmentation (the dataset's ``_get(index, rng=None)`` when it has one)."""
    get = getattr(dataset, "_get", None)
    return get(index, None) if get is not None else dataset[index]


@torch.no_grad()
def build_latent_cache(
    first_stage,
    dataset: Dataset,
    path: Path,
    key: dict[str, Any],
    *,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode ``dataset`` with ``first_stage.encode_raw`` and write the cache to ``path`` atomically."""
    flips = bool(getattr(dataset, "flip", False))
    n = len(dataset)  # type: ignore[arg-type]
    device = next(iter(first_stage.buffers())).device
    raws, raws_flipped, labels, captions = [], [], [], []
    indices = range(0, n, batch_size)
    if progress:
        from rich.progress import track

        indices = track(indices, description=f"encoding {n} samples into the latent cache")
    for start in indices:
        samples = [_deterministic_sample(dataset, i) for i in range(start, min(n, start + batch_size))]
        x = torch.stack([s["image"] for s in samples]).to(device)  # (b, C, H, W)
        raws.append(first_stage.encode_raw(x).float().cpu())  # (b, m*C_lat, h, w)
        if flips:
            raws_flipped.append(first_stage.encode_raw(torch.flip(x, dims=[-1])).float().cpu())
        if "label" in samples[0]:
            labels += [int(s["label"]) for s in samples]
        if "caption" in samples[0]:
            captions += [s["caption"] for s in samples]
    cache: dict[str, Any] = {"key": json.dumps(key, sort_keys=True, default=str), "raw": torch.cat(raws)}
    if flips:
        cache["raw_flipped"] = torch.cat(raws_flipped)
    if labels:
        cache["label"] = torch.tensor(labels, dtype=torch.long)
    if captions:
        cache["caption"] = captions
    atomic_torch_save(cache, path)
    return cache


def load_or_build_latent_cache(
    first_stage,
    dataset: Dataset,
    cache_dir: str | Path,
    dataset_config: dict[str, Any],
    split: str = "train",
    **kwargs: Any,
) -> tuple[dict[str, Any], Path]:
    """Load the cache for (first stage, dataset) if it exists and its stored key matches; else build it."""
    key = cache_key(first_stage, dataset_config, split)
    path = Path(cache_dir) / "latents" / f"{split}-{_key_digest(key)}.pt"
    if path.is_file():
        cache = load_checkpoint_file(path)
        if cache.get("key") != json.dumps(key, sort_keys=True, default=str):
            raise DataError(
                f"latent cache '{path}' was made with another first stage or dataset than this run's; "
                "delete it (or set paths.cache_dir elsewhere) to rebuild it."
            )
        log.info("using the latent cache %s", path)
        return cache, path
    log.info("building the latent cache %s", path)
    return build_latent_cache(first_stage, dataset, path, key, **kwargs), path


class CachedLatentDataset(Dataset):
    """Training samples from a latent cache: ``{"latent_raw": (m*C, h, w), "label"?, "caption"?}``.

    Accepts the ``(index, epoch)`` keys of the DataModule's sampler; the orientation of a flipped
    sample is a pure function of ``(seed, index, epoch)``.
    """

    epoch_keys = True

    def __init__(self, cache: dict[str, Any], base: Dataset, seed: int = 0) -> None:
        self.raw = cache["raw"]
        self.raw_flipped = cache.get("raw_flipped")
        self.labels = cache.get("label")
        self.captions = cache.get("caption")
        self.seed = int(seed)
        # What the DataModule and conditioners read from a dataset.
        for attr in ("resolution", "channels", "num_classes", "class_names"):
            setattr(self, attr, getattr(base, attr, None))
        if len(self.raw) != len(base):  # type: ignore[arg-type]
            raise DataError(f"latent cache has {len(self.raw)} samples but the dataset has {len(base)}; rebuild it")

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index, epoch = split_key(key)
        raw = self.raw[index]
        if self.raw_flipped is not None:
            rng = np.random.default_rng([PURPOSE_AUGMENT, self.seed, 0, index, -1 if epoch is None else epoch])
            if rng.random() < 0.5:
                raw = self.raw_flipped[index]
        sample: dict[str, Any] = {"latent_raw": raw}
        if self.labels is not None:
            sample["label"] = self.labels[index]
        if self.captions is not None:
            sample["caption"] = self.captions[index]
        return sample
