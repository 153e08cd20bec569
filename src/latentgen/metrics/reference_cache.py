"""Real-data reference features and their on-disk cache.

Reference features of real data are expensive (InceptionV3 at 299 px runs at ~5 img/s per CPU core), so
they are computed once and cached (:class:`ReferenceCache`). The cache key (:class:`ReferenceKey`) hashes
the dataset config, split, resolution, extractor name, a sha256 of the extractor's weights and the number
of samples; a different key gives a different file, and the key stored inside each file is checked on load.
:func:`reference_features` does the cache lookup, extraction (sharded under DDP) and save in one call.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from latentgen.errors import CheckpointError, ConfigError
from latentgen.files import atomic_torch_save
from latentgen.metrics.distributed import comm_device, on_every_rank, rank_and_world
from latentgen.metrics.extractors.base import FeatureExtractor
from latentgen.metrics.feature_extraction import extract_features, extract_shard_and_gather

__all__ = ["ReferenceCache", "ReferenceFeatures", "ReferenceKey", "reference_features"]


# Data-loader settings that do not change which images a dataset yields; dropped from the cache key.
_LOADER_ONLY_KEYS = frozenset({"batch_size", "num_workers", "pin_memory", "persistent_workers", "prefetch_factor"})
_CACHE_FORMAT = "latentgen-reference-features-v1"


def _plain(obj: Any) -> Any:
    """JSON-able plain containers from dicts / DictConfig / lists, without loader-only keys."""
    try:  # OmegaConf containers (lazy: omegaconf is only needed when one is passed)
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            obj = OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Mapping):
        return {
            str(k): _plain(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0])) if k not in _LOADER_ONLY_KEYS
        }
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


@dataclass(frozen=True)
class ReferenceKey:
    """What a set of reference features depends on. ``digest()`` names the cache file."""

    dataset: Mapping[str, Any]
    split: str
    resolution: int
    extractor_name: str
    extractor_fingerprint: str
    num_samples: int
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        *,
        dataset: Mapping[str, Any] | Any,
        split: str,
        resolution: int,
        extractor: FeatureExtractor,
        num_samples: int,
        extra: Mapping[str, Any] | None = None,
    ) -> ReferenceKey:
        """Key for ``extractor`` (its name and a sha256 of its weights) on a dataset config."""
        return cls(
            dataset=_plain(dataset),
            split=str(split),
            resolution=int(resolution),
            extractor_name=extractor.name,
            extractor_fingerprint=extractor.fingerprint(),
            num_samples=int(num_samples),
            extra=_plain(extra or {}),
        )

    def fields(self) -> dict[str, Any]:
        return {
            "dataset": _plain(self.dataset),
            "split": self.split,
            "resolution": self.resolution,
            "extractor_name": self.extractor_name,
            "extractor_fingerprint": self.extractor_fingerprint,
            "num_samples": self.num_samples,
            "extra": _plain(self.extra),
        }

    def to_json(self) -> str:
        return json.dumps(self.fields(), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()


@dataclass
class ReferenceFeatures:
    features: torch.Tensor  # (N, D) float32
    logits: torch.Tensor | None
    key: ReferenceKey
    path: Path | None = None
    from_cache: bool = False


class ReferenceCache:
    """Reference features on disk: ``<cache_dir>/reference_features/<extractor>-<key digest>.pt``.

    Files are written atomically with ``torch.save`` (plain tensors and strings) and read with
    ``torch.load(weights_only=True)``. A file whose stored key differs from the requested one raises
    :class:`latentgen.errors.CheckpointError`; it is never used silently.
    """

    def __init__(self, cache_dir: str | os.PathLike) -> None:
        self.root = Path(os.path.expanduser(str(cache_dir))) / "reference_features"

    def path(self, key: ReferenceKey) -> Path:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", key.extractor_name)
        return self.root / f"{slug}-{key.digest()[:24]}.pt"

    def load(self, key: ReferenceKey) -> ReferenceFeatures | None:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            payload = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(
                f"reference-feature cache '{p}' cannot be read ({type(e).__name__}: {e}); delete it to recompute"
            ) from e
        if not isinstance(payload, dict) or payload.get("format") != _CACHE_FORMAT:
            raise CheckpointError(f"'{p}' is not a latentgen reference-feature cache; delete it to recompute")
        stored = payload.get("key")
        if stored != key.to_json():
            try:
                stored_fields = json.loads(stored) if isinstance(stored, str) else {}
            except json.JSONDecodeError:
                stored_fields = {}
            wanted = key.fields()
            diff = sorted(k for k in set(wanted) | set(stored_fields) if wanted.get(k) != stored_fields.get(k))
            raise CheckpointError(
                f"reference-feature cache '{p}' was made for another key "
                f"(fields that differ: {diff or 'unreadable key'}; "
                f"stored extractor {stored_fields.get('extractor_name')!r}, requested {key.extractor_name!r}). "
                "It is not used; delete the file to recompute it."
            )
        feats = payload["features"]
        if not torch.is_tensor(feats) or feats.dim() != 2:
            raise CheckpointError(f"reference-feature cache '{p}' holds no (N, D) features; delete it to recompute")
        return ReferenceFeatures(feats, payload.get("logits"), key, p, from_cache=True)

    def save(self, key: ReferenceKey, features: torch.Tensor, logits: torch.Tensor | None = None) -> Path:
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        payload: dict[str, Any] = {
            "format": _CACHE_FORMAT,
            "key": key.to_json(),
            "features": features.detach().float().cpu().contiguous(),
        }
        if logits is not None:
            payload["logits"] = logits.detach().float().cpu().contiguous()
        return atomic_torch_save(payload, p)  # a crash never leaves a half-written cache file


def reference_features(
    cache: ReferenceCache | None,
    key: ReferenceKey,
    extractor: FeatureExtractor,
    batches: Iterable[Any] | Callable[[], Iterable[Any]],
    *,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> ReferenceFeatures:
    """Real-data features for ``key``: from the cache if there, else extracted (``key.num_samples``) and saved.

    ``batches`` may be a callable that returns the iterable, so no data loader is built on a cache hit.

    Under DDP (an initialised process group of several ranks) every rank must call this: on a cache miss
    rank r extracts batches r, r + world, ... and the features are gathered back into batch order, so the
    result (and the cache file rank 0 writes) equals one process's. The cache is used only when every rank
    finds it, so that no rank waits in a gather the others skipped.
    """
    if key.extractor_name != extractor.name or key.extractor_fingerprint != extractor.fingerprint():
        raise ConfigError(f"ReferenceKey was made for extractor '{key.extractor_name}', not '{extractor.name}'")
    rank, world = rank_and_world()
    collective_device = comm_device(extractor, device)  # used only when world > 1
    if cache is not None:
        hit = cache.load(key)
        if world > 1 and not on_every_rank(hit is not None, collective_device):
            hit = None
        if hit is not None:
            return hit
    it = batches() if callable(batches) else batches
    if world > 1:
        out = extract_shard_and_gather(extractor, it, key.num_samples, rank, world, device, collective_device, progress)
    else:
        out = extract_features(
            extractor, it, num_samples=key.num_samples, device=device, progress=progress, desc="reference"
        )
    path = None
    if cache is not None:
        path = cache.save(key, out["features"], out.get("logits")) if rank == 0 else cache.path(key)
    return ReferenceFeatures(out["features"], out.get("logits"), key, path, from_cache=False)
