"""The feature store of an evaluation: features accumulated over batches (DDP-synced), then every chosen
:class:`~latentgen.metrics.feature_metrics.FeatureMetric` computed from them.

:class:`GenerativeMetrics` is a ``torchmetrics.Metric``. ``update(images, real=...)`` runs the extractor on
a batch and appends the features to list states with ``dist_reduce_fx="cat"``, so ``compute()`` sees the
features of every DDP rank; it then hands the gathered sets (a :class:`FeatureSet`) to each metric and
returns their results, plus ``num_real`` and ``num_fake``. Images are uint8 (B, C, H, W) in [0, 255] or
float in [-1, 1] (the project's batch convention; quantized like a saved PNG, see ``to_uint8_images``).
rFID is the same machinery: ``update(originals, real=True)``, ``update(reconstructions, real=False)``,
``metrics=["fid"]``.

Typical use (single process or DDP; every rank runs the same code; reference features from
:mod:`latentgen.metrics.reference_cache`)::

    gm = GenerativeMetrics(extractor, metrics=[FID(), PrecisionRecall(k=3)])   # or names: ["fid", "prc"]
    gm.set_reference(reference_features(cache, key, extractor, real_batches).features)
    for images in generated_batches:
        gm.update(images, real=False)
    results = gm.compute()                                 # {"fid": ..., "precision": ..., ...}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from latentgen.errors import ConfigError, DataError
from latentgen.metrics.extractors.base import FeatureExtractor, to_uint8_images
from latentgen.metrics.feature_metrics import (
    FID,
    KID,
    DensityCoverage,
    FeatureMetric,
    FeatureSet,
    InceptionScore,
    PrecisionRecall,
)

__all__ = ["METRIC_NAMES", "GenerativeMetrics", "builtin_metrics"]

METRIC_NAMES = ("fid", "kid", "prc", "density_coverage", "is")
DEFAULT_METRICS = ("fid", "kid", "prc", "density_coverage")


def builtin_metrics(
    names: Sequence[str],
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
) -> list[FeatureMetric]:
    """The built-in metrics by config name (a shorthand for Python callers; configs name ``_target_`` s).

    Settings default to torch-fidelity's; ``seed`` seeds the KID subsets and the IS shuffle.
    """
    names = [str(m) for m in names]
    unknown = sorted(set(names) - set(METRIC_NAMES))
    if unknown or not names:
        raise ConfigError(f"metrics={names}: unknown names {unknown}; choose from {list(METRIC_NAMES)}")
    build = {
        "fid": lambda: FID(),
        "kid": lambda: KID(kid_subset_size, kid_subsets, kid_degree, kid_gamma, kid_coef0, seed),
        "prc": lambda: PrecisionRecall(prc_k, knn_batch_size),
        "density_coverage": lambda: DensityCoverage(dc_k, knn_batch_size),
        "is": lambda: InceptionScore(is_splits, seed),
    }
    return [build[name]() for name in dict.fromkeys(names)]


class GenerativeMetrics(Metric):
    """The chosen feature metrics of generated images against real ones.

    Args:
        extractor: a :class:`FeatureExtractor` (kept out of ``state_dict``; moved to the images' device
            on first use). ``None`` when only :meth:`update_features` is used.
        metrics: :class:`FeatureMetric` instances (a list, or a mapping name -> metric as instantiated from
            ``conf/metrics/``), or names of the built-in ones (``"fid", "kid", "prc", "density_coverage",
            "is"``), built by :func:`builtin_metrics` with ``**settings``.
        **kwargs: passed to ``torchmetrics.Metric`` (e.g. ``compute_on_cpu=True``, ``sync_on_compute``); with
            names, the settings of :func:`builtin_metrics` (``kid_subset_size``, ``prc_k``, ``seed``, ...).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(
        self,
        extractor: FeatureExtractor | None = None,
        metrics: Sequence[FeatureMetric | str] | Mapping[str, FeatureMetric] = DEFAULT_METRICS,
        **kwargs: Any,
    ) -> None:
        settings = {k: kwargs.pop(k) for k in list(kwargs) if k in _BUILTIN_SETTINGS}
        super().__init__(**kwargs)
        given = list(metrics.values()) if isinstance(metrics, Mapping) else list(metrics)
        names = [m for m in given if isinstance(m, str)]
        if given and len(names) == len(given):
            given = list(builtin_metrics(names, **settings))
        elif settings:
            raise ConfigError(f"{sorted(settings)} set the built-in metrics chosen by name; set them on the metrics")
        chosen = [m for m in given if isinstance(m, FeatureMetric)]
        bad = [m for m in given if not isinstance(m, FeatureMetric)]
        if bad or not chosen:
            raise ConfigError(
                f"metrics: {bad or 'none'} given; choose FeatureMetric instances (conf/metrics/) or names {list(METRIC_NAMES)}"
            )
        for metric in chosen:
            if metric.needs_logits and extractor is not None and not extractor.has_logits:
                raise ConfigError(
                    f"the {metric.label} needs logits, but extractor "
                    f"'{extractor.name}' ({extractor.weights_label}) has none; drop '{metric.name}' from the metrics "
                    "or use an extractor with logits (extractor=inception or extractor=dataset_classifier)."
                )
        self.feature_metrics = tuple(chosen)
        self.metric_names = tuple(m.name for m in chosen)
        self.needs_logits = any(m.needs_logits for m in chosen)
        # Not a registered submodule: Lightning checkpoints of a module holding this metric stay small.
        object.__setattr__(self, "extractor", extractor)
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
            if self.needs_logits:
                if logits is None:
                    raise ConfigError(f"{self.metric_names} need logits, but none were given for the generated samples")
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
            "metrics": {m.name: m.settings() for m in self.feature_metrics},
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
        logits = dim_zero_cat(self.fake_logits) if self.needs_logits else None  # (M, K)
        features = FeatureSet(real=real, fake=fake, fake_logits=logits)
        out: dict[str, float] = {"num_real": float(real.shape[0]), "num_fake": float(fake.shape[0])}
        for metric in self.feature_metrics:
            out.update(metric.compute(features))
        return out


_BUILTIN_SETTINGS = frozenset(
    {"kid_subset_size", "kid_subsets", "kid_degree", "kid_gamma", "kid_coef0", "prc_k", "dc_k", "is_splits",
     "seed", "knn_batch_size"}
)  # fmt: skip
