"""Feature accumulation over batches (DDP-synced) and the on-disk cache of real-data reference features.

:class:`GenerativeMetrics` is a ``torchmetrics.Metric``. ``update(images, real=...)`` runs the extractor on
a batch and appends the features to list states with ``dist_reduce_fx="cat"``, so ``compute()`` sees the
features of every DDP rank; it then computes the requested metrics on the gathered sets:

=====================  ==================================================  ==============================
name in ``metrics``    keys in the result                                   paper / reference
=====================  ==================================================  ==============================
``fid``                ``fid``                                              Heusel et al. 2017
``kid``                ``kid_mean``, ``kid_std``, ``kid_subset_size``       Bińkowski et al. 2018
``prc``                ``precision``, ``recall``                            Kynkäänniemi et al. 2019, k=3
``density_coverage``   ``density``, ``coverage``                            Naeem et al. 2020, k=5
``is``                 ``is_mean``, ``is_std`` (needs logits)               Salimans et al. 2016
=====================  ==================================================  ==============================

plus ``num_real`` and ``num_fake``. Images are uint8 (B, C, H, W) in [0, 255] or float in [-1, 1] (the
project's batch convention; quantized like a saved PNG, see :func:`to_uint8_images`).
rFID is the same machinery: ``update(originals, real=True)``, ``update(reconstructions, real=False)``,
``metrics=["fid"]``.

Reference features of real data are expensive (InceptionV3 at 299 px runs at ~5 img/s per CPU core), so
they are computed once and cached (:class:`ReferenceCache`). The cache key hashes the dataset config,
split, resolution, extractor name, a sha256 of the extractor's weights and the number of samples; a
different key gives a different file, and the key stored inside each file is checked on load.

Typical use (single process or DDP; every rank runs the same code)::

    gm = GenerativeMetrics(extractor, metrics=["fid", "kid", "prc", "density_coverage"])
    key = ReferenceKey.create(dataset=data_cfg, split="val", resolution=32, extractor=extractor, num_samples=5000)
    ref = ReferenceCache(cache_dir).load(key)             # None on a miss
    if ref is None:
        for batch in real_loader:                          # sharded across ranks by the sampler
            gm.update(batch["image"], real=True)
        ref = gm.gathered_features(real=True)              # all ranks' real features
        if rank == 0:
            ReferenceCache(cache_dir).save(key, ref)
    else:
        gm.set_reference(ref)
    for images in generated_batches:
        gm.update(images, real=False)
    results = gm.compute()                                 # {"fid": ..., "kid_mean": ..., ...}

Single process, :func:`reference_features` does the cache lookup, extraction and save in one call.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from latentgen.errors import CheckpointError, ConfigError, DataError
from latentgen.files import atomic_torch_save
from latentgen.metrics.extractors.base import FeatureExtractor, to_uint8_images
from latentgen.metrics.frechet import feature_statistics, frechet_distance
from latentgen.metrics.isc import inception_score
from latentgen.metrics.kid import kernel_inception_distance
from latentgen.metrics.knn import density_coverage, precision_recall

__all__ = [
    "METRIC_NAMES",
    "GenerativeMetrics",
    "ReferenceCache",
    "ReferenceFeatures",
    "ReferenceKey",
    "extract_features",
    "reference_features",
]

METRIC_NAMES = ("fid", "kid", "prc", "density_coverage", "is")


class GenerativeMetrics(Metric):
    """FID / KID / precision-recall / density-coverage / IS of generated images against real ones.

    Args:
        extractor: a :class:`FeatureExtractor` (kept out of ``state_dict``; moved to the images' device
            on first use). ``None`` when only :meth:`update_features` is used.
        metrics: any of ``"fid", "kid", "prc", "density_coverage", "is"``.
        kid_subset_size, kid_subsets, kid_degree, kid_gamma, kid_coef0: KID settings (torch-fidelity's
            defaults). When a set has fewer samples than ``kid_subset_size`` the subset size drops to
            that number, with a warning, and the size used is reported as ``kid_subset_size``.
        prc_k: k of precision/recall. dc_k: k of density/coverage. is_splits: splits of the IS.
        seed: seed of the KID subsets and the IS shuffle (torch-fidelity's default 2020).
        knn_batch_size: block size of the pairwise-distance computations.
        **kwargs: passed to ``torchmetrics.Metric`` (e.g. ``compute_on_cpu=True``, ``sync_on_compute``).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(
        self,
        extractor: FeatureExtractor | None = None,
        metrics: Sequence[str] = ("fid", "kid", "prc", "density_coverage"),
        *,
        kid_subset_size: int = 1000,
        kid_subsets: int = 100,
        kid_degree: int = 3,
        kid_gamma: float | None = None,
        kid_coef0: float = 1.0,
        prc_k: int = 3,
        dc_k: int = 5,
        is_splits: int = 10,
        seed: int = 2020,
        knn_batch_size: int = 10000,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        metrics = [str(m) for m in metrics]
        unknown = sorted(set(metrics) - set(METRIC_NAMES))
        if unknown or not metrics:
            raise ConfigError(f"metrics={metrics}: unknown names {unknown}; choose from {list(METRIC_NAMES)}")
        if "is" in metrics and extractor is not None and not extractor.has_logits:
            raise ConfigError(
                f"the Inception Score needs logits, but extractor '{extractor.name}' ({extractor.weights_label}) has "
                "none; drop 'is' from the metrics or use an extractor with logits (extractor=inception or "
                "extractor=dataset_classifier)."
            )
        self.metric_names = tuple(dict.fromkeys(metrics))
        # Not a registered submodule: Lightning checkpoints of a module holding this metric stay small.
        object.__setattr__(self, "extractor", extractor)
        self.kid_kwargs = {"subsets": kid_subsets, "degree": kid_degree, "gamma": kid_gamma, "coef0": kid_coef0}
        self.kid_subset_size = kid_subset_size
        self.prc_k, self.dc_k, self.is_splits, self.seed = prc_k, dc_k, is_splits, seed
        self.knn_batch_size = knn_batch_size
        self.add_state("real_features", default=[], dist_reduce_fx="cat")
        self.add_state("fake_features", default=[], dist_reduce_fx="cat")
        self.add_state("fake_logits", default=[], dist_reduce_fx="cat")
        self._reference: torch.Tensor | None = None

    # ---------------------------------------------------------------------------------------------- input

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features (and logits) of one batch, with the extractor on the images' device."""
        if self.extractor is None:
            raise ConfigError("GenerativeMetrics was built without an extractor; use update_features(...)")
        u8 = to_uint8_images(images)  # (B, 3, H, W) uint8
        first = next(self.extractor.parameters(), None)
        if first is not None and first.device != u8.device:
            self.extractor.to(u8.device)
        return self.extractor(u8)

    def update(self, images: torch.Tensor, real: bool = False) -> None:  # type: ignore[override]
        """Add a batch of real (``real=True``) or generated images."""
        out = self.extract(images)
        self._append(out["features"], real, out.get("logits"))

    def update_features(self, features: torch.Tensor, real: bool = False, logits: torch.Tensor | None = None) -> None:
        """Add precomputed (B, D) features (and (B, K) logits for generated samples)."""
        self._update_count += 1
        self._computed = None
        self._append(features, real, logits)

    def _append(self, features: torch.Tensor, real: bool, logits: torch.Tensor | None) -> None:
        if features.dim() != 2:
            raise DataError(f"features must be (B, D), got {tuple(features.shape)}")
        if real:
            if self._reference is not None:
                raise ConfigError("reference features were set with set_reference(); do not also add real batches")
            self.real_features.append(features.detach().float())
        else:
            self.fake_features.append(features.detach().float())
            if "is" in self.metric_names:
                if logits is None:
                    raise ConfigError("'is' was requested but no logits were given for the generated samples")
                self.fake_logits.append(logits.detach().float())

    def set_reference(self, features: torch.Tensor) -> None:
        """Use cached real features (N, D) instead of real batches (the same on every rank)."""
        if len(self.real_features) > 0:
            raise ConfigError("real batches were already added; set_reference() replaces them, call reset() first")
        if features.dim() != 2:
            raise DataError(f"reference features must be (N, D), got {tuple(features.shape)}")
        self._reference = features.detach().float()

    def gathered_features(self, real: bool = True) -> torch.Tensor:
        """The real (or generated) features of all ranks, (N, D); local ones outside DDP."""
        name = "real_features" if real else "fake_features"
        if real and self._reference is not None:
            return self._reference
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync, should_unsync=True):
            state = getattr(self, name)
            if isinstance(state, list) and len(state) == 0:
                raise DataError(f"no {'real' if real else 'generated'} features were added")
            return dim_zero_cat(state).clone()

    def reset(self) -> None:
        super().reset()
        self._reference = None

    def metadata(self) -> dict[str, Any]:
        """What produced the numbers (for metrics.json)."""
        ex = self.extractor
        return {
            "extractor": None if ex is None else ex.name,
            "extractor_weights": None if ex is None else ex.weights_label,
            "feature_dim": None if ex is None else ex.feature_dim,
            "metrics": list(self.metric_names),
            "kid": {"subset_size": self.kid_subset_size, **self.kid_kwargs},
            "prc_k": self.prc_k,
            "dc_k": self.dc_k,
            "is_splits": self.is_splits,
            "seed": self.seed,
        }

    # ---------------------------------------------------------------------------------------------- compute

    def compute(self) -> dict[str, float]:
        if isinstance(self.fake_features, list) and len(self.fake_features) == 0:
            raise DataError("GenerativeMetrics.compute(): no generated samples were added (update(images, real=False))")
        fake = dim_zero_cat(self.fake_features)  # (M, D), all ranks
        if self._reference is not None:
            real = self._reference.to(fake.device)
        elif isinstance(self.real_features, list) and len(self.real_features) == 0:
            raise DataError("GenerativeMetrics.compute(): no real samples: add real batches or set_reference(features)")
        else:
            real = dim_zero_cat(self.real_features)  # (N, D)
        if real.shape[1] != fake.shape[1]:
            raise DataError(
                f"real features have dim {real.shape[1]} but generated ones {fake.shape[1]}: mixed extractors"
            )
        out: dict[str, float] = {"num_real": float(real.shape[0]), "num_fake": float(fake.shape[0])}
        names = self.metric_names
        if "fid" in names:
            mu_r, sig_r = feature_statistics(real)
            mu_f, sig_f = feature_statistics(fake)
            out["fid"] = frechet_distance(mu_r, sig_r, mu_f, sig_f)
        if "kid" in names:
            subset = min(self.kid_subset_size, real.shape[0], fake.shape[0])
            if subset < self.kid_subset_size:
                warnings.warn(
                    f"KID: kid_subset_size={self.kid_subset_size} > number of samples (real {real.shape[0]}, "
                    f"generated {fake.shape[0]}); using subsets of {subset}. Compare KIDs only at equal subset sizes.",
                    stacklevel=2,
                )
            # generated set first, like torch-fidelity's input1
            mean, std = kernel_inception_distance(fake, real, subset_size=subset, seed=self.seed, **self.kid_kwargs)
            out.update(kid_mean=mean, kid_std=std, kid_subset_size=float(subset))
        if "prc" in names:
            pr = precision_recall(real, fake, k=self.prc_k, batch_size=self.knn_batch_size)
            out.update(precision=pr["precision"], recall=pr["recall"])
        if "density_coverage" in names:
            out.update(density_coverage(real, fake, k=self.dc_k, batch_size=self.knn_batch_size))
        if "is" in names:
            mean, std = inception_score(dim_zero_cat(self.fake_logits), splits=self.is_splits, seed=self.seed)
            out.update(is_mean=mean, is_std=std)
        return out


# -------------------------------------------------------------------------------------------------- cache

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


def _images_of(batch: Any) -> torch.Tensor:
    if torch.is_tensor(batch):
        return batch
    if isinstance(batch, Mapping) and "image" in batch:
        return batch["image"]
    if isinstance(batch, (list, tuple)) and batch and torch.is_tensor(batch[0]):
        return batch[0]
    raise DataError(
        f"cannot find images in a batch of type {type(batch).__name__}; expected a tensor or {{'image': ...}}"
    )


@torch.no_grad()
def extract_features(
    extractor: FeatureExtractor,
    batches: Iterable[Any],
    *,
    num_samples: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    desc: str = "features",
    allow_empty: bool = False,
) -> dict[str, torch.Tensor]:
    """Run ``extractor`` over batches (tensors or ``{"image": ...}`` dicts) until ``num_samples`` images.

    Returns ``{"features": (N, D)}`` (+ ``"logits"``), on the CPU. ``progress`` shows a tqdm bar with ETA.
    No images is a DataError, unless ``allow_empty`` (a DDP rank without a share): then ``{}``.
    """
    if device is not None:
        extractor.to(device)
    feats, logits, n = [], [], 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_samples, desc=desc, unit="img", dynamic_ncols=True)
    try:
        for batch in batches:
            images = _images_of(batch)
            if num_samples is not None:
                images = images[: num_samples - n]
            if images.shape[0] == 0:
                break
            dev = next(extractor.parameters()).device if device is None else torch.device(device)
            out = extractor(to_uint8_images(images.to(dev)))
            feats.append(out["features"].float().cpu())
            if "logits" in out:
                logits.append(out["logits"].float().cpu())
            n += images.shape[0]
            if bar is not None:
                bar.update(images.shape[0])
            if num_samples is not None and n >= num_samples:
                break
    finally:
        if bar is not None:
            bar.close()
    if n == 0:
        if allow_empty:
            return {}
        raise DataError(f"extract_features ({desc}): the batches yielded no images")
    result = {"features": torch.cat(feats)}
    if logits:
        result["logits"] = torch.cat(logits)
    return result


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
    comm_device = _comm_device(extractor, device) if world > 1 else None
    if cache is not None:
        hit = cache.load(key)
        if world > 1 and not _on_every_rank(hit is not None, comm_device):
            hit = None
        if hit is not None:
            return hit
    it = batches() if callable(batches) else batches
    if world > 1:
        out = _extract_shard_and_gather(extractor, it, key.num_samples, rank, world, device, comm_device, progress)
    else:
        out = extract_features(
            extractor, it, num_samples=key.num_samples, device=device, progress=progress, desc="reference"
        )
    path = None
    if cache is not None:
        path = cache.save(key, out["features"], out.get("logits")) if rank == 0 else cache.path(key)
    return ReferenceFeatures(out["features"], out.get("logits"), key, path, from_cache=False)


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the initialised default process group; (0, 1) outside DDP."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _comm_device(extractor: FeatureExtractor, device: torch.device | str | None) -> torch.device:
    """Where collective tensors live: the extractor's device (NCCL needs GPU tensors, gloo takes CPU ones)."""
    if device is not None:
        return torch.device(device)
    first = next(extractor.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _on_every_rank(flag: bool, comm_device: torch.device) -> bool:
    t = torch.tensor([int(flag)], device=comm_device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def _extract_shard_and_gather(
    extractor: FeatureExtractor,
    batches: Iterable[Any],
    num_samples: int,
    rank: int,
    world: int,
    device: torch.device | str | None,
    comm_device: torch.device,
    progress: bool,
) -> dict[str, torch.Tensor]:
    """This rank's share of the first ``num_samples`` images (batches rank, rank + world, ...), extracted,
    then all ranks' features gathered and put back in the order of the batches."""
    positions: list[torch.Tensor] = []  # the global position of each image this rank extracts

    def my_batches():
        seen = 0
        for index, batch in enumerate(batches):
            images = _images_of(batch)[: num_samples - seen]  # (B, C, H, W)
            if images.shape[0] == 0:
                return
            if index % world == rank:
                positions.append(torch.arange(seen, seen + images.shape[0]))
                yield images
            seen += images.shape[0]

    out = extract_features(extractor, my_batches(), device=device, progress=progress and rank == 0,
                           desc=f"reference (rank 0 of {world})", allow_empty=True)  # fmt: skip
    parts = {"features": out.get("features"), "logits": out.get("logits")}
    n = 0 if parts["features"] is None else parts["features"].shape[0]
    # Sizes first: a rank with no share knows neither D nor whether there are logits.
    dims = torch.tensor([n, *(0 if v is None else v.shape[1] for v in parts.values())], device=comm_device)
    all_dims = [torch.zeros_like(dims) for _ in range(world)]
    dist.all_gather(all_dims, dims)
    counts = [int(d[0]) for d in all_dims]
    longest = max(counts)
    if longest == 0:
        raise DataError("reference features: the batches yielded no images")
    where = torch.cat(positions) if positions else torch.zeros(0, dtype=torch.long)
    gathered = {"positions": _gather_padded(where.to(comm_device).unsqueeze(1), longest, counts, world)}
    for i, (name, value) in enumerate(parts.items(), start=1):
        width = max(int(d[i]) for d in all_dims)
        if width == 0:
            continue  # no rank has this output (logits of an extractor without a head)
        local = value if value is not None else torch.zeros(0, width)
        gathered[name] = _gather_padded(local.to(comm_device), longest, counts, world)
    order = torch.argsort(gathered.pop("positions").squeeze(1))  # (N,) back to batch order
    return {name: v[order].cpu() for name, v in gathered.items()}


def _gather_padded(local: torch.Tensor, longest: int, counts: list[int], world: int) -> torch.Tensor:
    """all_gather rows of unequal counts: pad each rank's (n_r, D) to (longest, D), gather, drop the padding."""
    padded = torch.zeros(longest, local.shape[1], dtype=local.dtype, device=local.device)  # (longest, D)
    padded[: local.shape[0]] = local
    slots = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(slots, padded)
    return torch.cat([slot[:n] for slot, n in zip(slots, counts)])  # (sum n_r, D)
