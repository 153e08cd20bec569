"""Evaluation metrics: feature extractors, FID / KID / precision-recall / density-coverage / IS, and
reconstruction metrics (PSNR / SSIM / LPIPS).

Feature-space functions take (N, D) features (torch or numpy) and return Python floats:

- :func:`frechet_distance` (+ :func:`feature_statistics`, :func:`frechet_distance_from_features`)
- :func:`kernel_inception_distance`
- :func:`precision_recall`
- :func:`density_coverage`
- :func:`inception_score` (from logits)

The same as configurable classes over one feature store (chosen by ``conf/metrics/``): :class:`FID`,
:class:`KID`, :class:`PrecisionRecall`, :class:`DensityCoverage`, :class:`InceptionScore`, all
:class:`FeatureMetric` s.

Batch-wise, DDP-synced accumulation: :class:`GenerativeMetrics`, :class:`ReconstructionMetrics`;
reference-feature cache: :class:`ReferenceCache`, :class:`ReferenceKey`, :func:`reference_features`.
Extractors: :class:`InceptionFID`, :class:`FIDHelperInception`, :class:`DatasetClassifierExtractor`,
:class:`DINOv2Extractor`, :class:`CLIPExtractor`.

Modules: ``frechet``, ``kid``, ``knn`` (precision/recall, density/coverage), ``isc``, ``extractors/`` (one
module per extractor), ``dataset_classifier`` (network, extractor, training, config factory and command
line), ``attribute_classifier`` (text-to-image alignment on shapes), ``classifier_training`` (their shared
loop), ``feature_metrics`` (FID, KID, IS, PR, DC as classes over one feature store),
``generative_metrics`` (that store), ``reference_cache``, ``feature_extraction``, ``distributed``,
``reconstruction``. The feature-space functions (torch + numpy only) are imported
here; the rest lazily on first use (torchmetrics costs seconds to import).
"""

from __future__ import annotations

import importlib
from typing import Any

from latentgen.metrics._checks import NotEnoughSamplesError
from latentgen.metrics.frechet import feature_statistics, frechet_distance, frechet_distance_from_features
from latentgen.metrics.isc import inception_score
from latentgen.metrics.kid import kernel_inception_distance
from latentgen.metrics.knn import density_coverage, precision_recall

_EXPORTS = {
    "FeatureExtractor": "extractors.base",
    "InceptionFID": "extractors.inception",
    "FIDHelperInception": "extractors.fid_helper",
    "DatasetClassifierExtractor": "dataset_classifier",
    "DINOv2Extractor": "extractors.dinov2",
    "CLIPExtractor": "extractors.clip",
    "to_uint8_images": "extractors.base",
    "train_dataset_classifier": "dataset_classifier",
    "save_dataset_classifier": "dataset_classifier",
    "GenerativeMetrics": "generative_metrics",
    "METRIC_NAMES": "generative_metrics",
    "FeatureMetric": "feature_metrics",
    "FeatureSet": "feature_metrics",
    "FID": "feature_metrics",
    "KID": "feature_metrics",
    "PrecisionRecall": "feature_metrics",
    "DensityCoverage": "feature_metrics",
    "InceptionScore": "feature_metrics",
    "ReferenceCache": "reference_cache",
    "ReferenceKey": "reference_cache",
    "ReferenceFeatures": "reference_cache",
    "reference_features": "reference_cache",
    "extract_features": "feature_extraction",
    "ReconstructionMetrics": "reconstruction",
    "psnr_per_sample": "reconstruction",
    "ssim_per_sample": "reconstruction",
}

__all__ = [
    "FID",
    "KID",
    "METRIC_NAMES",
    "CLIPExtractor",
    "DINOv2Extractor",
    "DatasetClassifierExtractor",
    "DensityCoverage",
    "FIDHelperInception",
    "FeatureExtractor",
    "FeatureMetric",
    "FeatureSet",
    "GenerativeMetrics",
    "InceptionFID",
    "InceptionScore",
    "NotEnoughSamplesError",
    "PrecisionRecall",
    "ReconstructionMetrics",
    "ReferenceCache",
    "ReferenceFeatures",
    "ReferenceKey",
    "density_coverage",
    "extract_features",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_features",
    "inception_score",
    "kernel_inception_distance",
    "precision_recall",
    "psnr_per_sample",
    "reference_features",
    "save_dataset_classifier",
    "ssim_per_sample",
    "to_uint8_images",
    "train_dataset_classifier",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'latentgen.metrics' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"latentgen.metrics.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
