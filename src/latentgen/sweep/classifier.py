"""The dataset classifier (FID features on embedded data) that a sweep trains on first use.

``dataset_classifier_extractor(weights_path, datamodule)`` returns a
:class:`~latentgen.metrics.extractors.DatasetClassifierExtractor` loaded from ``weights_path``; when the
file is missing and ``train_if_missing`` it first trains one on the datamodule's labelled train split
(seconds on one core; the same as ``python -m latentgen.metrics.train_extractor``) and writes it there
atomically. Only sweep configs use this factory; ``extractor=dataset_classifier`` elsewhere keeps its
clear missing-file error.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("latentgen")


def dataset_classifier_extractor(
    weights_path: str | os.PathLike,
    datamodule=None,
    *,
    train_if_missing: bool = True,
    dataset_name: str = "dataset",
    epochs: int = 15,
    seed: int = 0,
):
    from latentgen.metrics.extractors import (
        DatasetClassifierExtractor,
        save_dataset_classifier,
        train_dataset_classifier,
    )

    path = Path(os.path.expanduser(str(weights_path)))
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    if not path.is_file() and train_if_missing and datamodule is not None:
        log.info("training the dataset classifier for FID features into %s (first use)", path)
        datamodule.setup("fit")
        train, val = datamodule.dataset("train"), datamodule.dataset("val")
        extractor, summary = train_dataset_classifier(
            train, val, epochs=epochs, seed=seed, resolution=int(datamodule.resolution), dataset_name=dataset_name,
            num_classes=getattr(train, "num_classes", None), class_names=getattr(train, "class_names", None),
        )  # fmt: skip
        # Write under a temporary name, then rename (json first: readers test the .safetensors).
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.safetensors")
        weights, meta = save_dataset_classifier(extractor, tmp)
        os.replace(meta, path.with_suffix(".json"))
        os.replace(weights, path)
        log.info("dataset classifier: val accuracy %.3f (%.1f s)", summary["val_accuracy"], summary["train_seconds"])
    return DatasetClassifierExtractor(path)
