"""Metrics of generated images against real ones in feature space, as small classes with one interface.

Every metric computes from the one feature store of an evaluation (:class:`FeatureSet`: the gathered
features of all real and generated images, and the generated images' logits), which
:class:`~latentgen.metrics.generative_metrics.GenerativeMetrics` fills batch by batch. The metrics of an
evaluation are chosen by config: ``conf/metrics/<name>.yaml`` holds one ``_target_`` each, and
``evaluate.py metrics=[fid,kid]`` (or an experiment's defaults list) picks them. A new metric is a
:class:`FeatureMetric` subclass plus a YAML file in ``conf/metrics/``; no evaluation code changes.

=====================  ====================  ==================================================  ==========================
config name            class                 keys in the result                                   paper
=====================  ====================  ==================================================  ==========================
``fid``                :class:`FID`          ``fid``                                              Heusel et al. 2017
``kid``                :class:`KID`          ``kid_mean``, ``kid_std``, ``kid_subset_size``       Bińkowski et al. 2018
``prc``                :class:`PrecisionRecall`  ``precision``, ``recall``                        Kynkäänniemi et al. 2019
``density_coverage``   :class:`DensityCoverage`  ``density``, ``coverage``                        Naeem et al. 2020
``is``                 :class:`InceptionScore`   ``is_mean``, ``is_std`` (needs logits)           Salimans et al. 2016
=====================  ====================  ==================================================  ==========================

The maths is in ``frechet``, ``kid``, ``knn`` and ``isc`` (each checked against torch-fidelity); these
classes only hold the settings and name the results.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from latentgen.errors import ConfigError
from latentgen.metrics.frechet import feature_statistics, frechet_distance
from latentgen.metrics.isc import inception_score
from latentgen.metrics.kid import kernel_inception_distance
from latentgen.metrics.knn import density_coverage, precision_recall

__all__ = ["FID", "KID", "DensityCoverage", "FeatureMetric", "FeatureSet", "InceptionScore", "PrecisionRecall"]


@dataclass(frozen=True)
class FeatureSet:
    """The feature store every metric of an evaluation reads: all ranks' features, gathered."""

    real: torch.Tensor  # (N, D)
    fake: torch.Tensor  # (M, D)
    fake_logits: torch.Tensor | None = None  # (M, K), for metrics with needs_logits


class FeatureMetric:
    """One metric (or a pair, such as precision and recall) computed from a :class:`FeatureSet`.

    ``name`` is the config name (``conf/metrics/<name>.yaml``, ``metrics.json``'s metadata), ``label`` what
    messages call it; ``needs_logits`` asks the evaluation for the generated images' logits (an extractor
    with a head).
    """

    name: ClassVar[str] = "metric"
    label: ClassVar[str] = "metric"
    needs_logits: ClassVar[bool] = False

    def compute(self, features: FeatureSet) -> dict[str, float]:  # pragma: no cover - abstract
        """{result key: value}; keys must not collide with another metric's."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """What else the numbers depend on (k, subset sizes, seeds), for metrics.json."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.settings().items())})"


class FID(FeatureMetric):
    """Fréchet distance between Gaussians fitted to the real and generated features (Heusel et al. 2017)."""

    name = "fid"
    label = "FID"

    def compute(self, features: FeatureSet) -> dict[str, float]:
        mu_r, sig_r = feature_statistics(features.real)
        mu_f, sig_f = feature_statistics(features.fake)
        return {"fid": frechet_distance(mu_r, sig_r, mu_f, sig_f)}


class KID(FeatureMetric):
    """Kernel Inception Distance: unbiased MMD² with a polynomial kernel over random subsets (Bińkowski et al.
    2018), torch-fidelity's defaults. With fewer samples than ``subset_size`` the subsets shrink to that
    number, with a warning; the size used is reported as ``kid_subset_size``."""

    name = "kid"
    label = "KID"

    def __init__(
        self,
        subset_size: int = 1000,
        subsets: int = 100,
        degree: int = 3,
        gamma: float | None = None,
        coef0: float = 1.0,
        seed: int = 2020,
    ) -> None:
        self.subset_size, self.subsets, self.degree = int(subset_size), int(subsets), int(degree)
        self.gamma, self.coef0, self.seed = gamma, coef0, int(seed)

    def compute(self, features: FeatureSet) -> dict[str, float]:
        real, fake = features.real, features.fake
        subset = min(self.subset_size, real.shape[0], fake.shape[0])
        if subset < self.subset_size:
            warnings.warn(
                f"KID: kid_subset_size={self.subset_size} > number of samples (real {real.shape[0]}, "
                f"generated {fake.shape[0]}); using subsets of {subset}. Compare KIDs only at equal subset sizes.",
                stacklevel=3,
            )
        # generated set first, like torch-fidelity's input1
        mean, std = kernel_inception_distance(fake, real, subset_size=subset, subsets=self.subsets,
                                              degree=self.degree, gamma=self.gamma, coef0=self.coef0,
                                              seed=self.seed)  # fmt: skip
        return {"kid_mean": mean, "kid_std": std, "kid_subset_size": float(subset)}

    def settings(self) -> dict[str, Any]:
        return {"subset_size": self.subset_size, "subsets": self.subsets, "degree": self.degree,
                "gamma": self.gamma, "coef0": self.coef0, "seed": self.seed}  # fmt: skip


class PrecisionRecall(FeatureMetric):
    """Improved precision and recall of k-NN manifolds (Kynkäänniemi et al. 2019), k = 3."""

    name = "prc"
    label = "precision/recall"

    def __init__(self, k: int = 3, batch_size: int = 10000) -> None:
        self.k, self.batch_size = int(k), int(batch_size)

    def compute(self, features: FeatureSet) -> dict[str, float]:
        pr = precision_recall(features.real, features.fake, k=self.k, batch_size=self.batch_size)
        return {"precision": pr["precision"], "recall": pr["recall"]}

    def settings(self) -> dict[str, Any]:
        return {"k": self.k}


class DensityCoverage(FeatureMetric):
    """Density and coverage against the real samples' k-NN balls (Naeem et al. 2020), k = 5."""

    name = "density_coverage"
    label = "density/coverage"

    def __init__(self, k: int = 5, batch_size: int = 10000) -> None:
        self.k, self.batch_size = int(k), int(batch_size)

    def compute(self, features: FeatureSet) -> dict[str, float]:
        return dict(density_coverage(features.real, features.fake, k=self.k, batch_size=self.batch_size))

    def settings(self) -> dict[str, Any]:
        return {"k": self.k}


class InceptionScore(FeatureMetric):
    """Inception Score of the generated images' class logits (Salimans et al. 2016), torch-fidelity's splits
    and seed; needs an extractor with logits."""

    name = "is"
    label = "Inception Score"
    needs_logits = True

    def __init__(self, splits: int = 10, seed: int = 2020) -> None:
        self.splits, self.seed = int(splits), int(seed)

    def compute(self, features: FeatureSet) -> dict[str, float]:
        if features.fake_logits is None:
            raise ConfigError("the Inception Score needs the generated images' logits; none were gathered")
        mean, std = inception_score(features.fake_logits, splits=self.splits, seed=self.seed)
        return {"is_mean": mean, "is_std": std}

    def settings(self) -> dict[str, Any]:
        return {"splits": self.splits, "seed": self.seed}
