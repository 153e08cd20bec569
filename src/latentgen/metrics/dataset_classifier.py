"""The dataset classifier: FID-like features on embedded datasets, from a small CNN trained on their labels.

(About 400 lines: the network, its extractor, files, training, config factory and command line are one
concept that used to be spread over three modules.)

Inception features say little about 32 px digits or shapes; a small CNN trained on the dataset's own
labels gives features (penultimate layer, 128-d) and logits for FID / KID / PR / DC / IS there.
Everything about it lives here: the network, the extractor around it, its files (``<out>.safetensors`` +
``<out>.json``), its training, the config factory and the command line that trains one:

    python -m latentgen.metrics.dataset_classifier data=digits out=.cache/latentgen/extractors/digits_32px.safetensors
    python -m latentgen.metrics.dataset_classifier data=shapes data.resolution=64 epochs=20 out=...

Arguments are ``key=value``: ``data=<conf/data option>`` and any ``data.*`` override are composed from
the project's ``conf/`` with Hydra; ``out`` (required), ``epochs`` (15), ``batch_size`` (64), ``lr``
(3e-3), ``width`` (32), ``feature_dim`` (128), ``seed`` (0), ``max_samples`` (all), ``conf_dir`` and
``progress`` (true) are the command's own. It prints the validation accuracy and training time; then use
``extractor=dataset_classifier extractor.weights_path=<out>.safetensors``.

:func:`dataset_classifier_extractor` (the ``_target_`` of ``conf/extractor/dataset_classifier.yaml`` and of
the f-sweep's evaluation) loads the file; given a datamodule it first trains one when the file is missing.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latentgen.errors import CheckpointError, ConfigError, DataError
from latentgen.metrics.classifier_training import fit_classifier
from latentgen.metrics.extractors.base import FeatureExtractor, to_uint8_images
from latentgen.weights import read_meta_beside, resolve_weights_file, save_weights_with_meta

__all__ = [
    "DatasetClassifierExtractor",
    "SmallClassifierNet",
    "dataset_classifier_extractor",
    "load_dataset_classifier",
    "main",
    "save_dataset_classifier",
    "train_dataset_classifier",
]

log = logging.getLogger("latentgen")

_CLASSIFIER_FORMAT = "latentgen-dataset-classifier-v1"
# The architecture keys of the .json beside the weights (written by save_dataset_classifier).
_ARCHITECTURE_KEYS = ("in_channels", "resolution", "num_classes", "width", "feature_dim")
_TRAIN_COMMAND = "python -m latentgen.metrics.dataset_classifier data=<conf/data option> out=<path>"


# ---------------------------------------------------------------------------------------------- network
class SmallClassifierNet(nn.Module):
    """Three strided 3x3 convs + BN + SiLU, global average pool, a ``feature_dim`` layer, a linear head.

    At 32 px: 32 -> 16 -> 8 -> 4 px; about 5 MFLOP per image, so it trains in seconds on one core.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, feature_dim: int = 128) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.SiLU()
            )

        self.trunk = nn.Sequential(block(in_channels, width), block(width, 2 * width), block(2 * width, 4 * width))
        self.embed = nn.Sequential(nn.Linear(4 * width, feature_dim), nn.SiLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x).mean(dim=(2, 3))  # (B, 4w) global average pool
        features = self.embed(h)  # (B, feature_dim), penultimate layer
        return features, self.head(features)  # (B, feature_dim), (B, num_classes)


class DatasetClassifierExtractor(FeatureExtractor):
    """Penultimate features and logits of a :class:`SmallClassifierNet` trained on a dataset's labels.

    Loaded from ``weights_path`` (config ``extractor.weights_path``, or ``$LATENTGEN_CLASSIFIER_WEIGHTS``):
    a ``.safetensors`` file with a ``.json`` of the same stem beside it, as written by
    :func:`save_dataset_classifier` or this module's command line.
    Input: uint8 images, converted to [-1, 1], resized (bilinear, antialiased) to the training
    resolution and averaged to one channel when the classifier was trained on grey images.
    """

    has_logits = True

    def __init__(self, weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        given = None if weights_path in (None, "") else Path(os.path.expanduser(str(weights_path)))
        path = resolve_weights_file(
            given,
            what="dataset classifier for FID-like metrics",
            filename=given.name if given is not None else "dataset_classifier.safetensors",
            config_key="extractor.weights_path",
            env_var="LATENTGEN_CLASSIFIER_WEIGHTS",
            source_url=None,
            search_torch_hub=False,
        )
        net, meta = load_dataset_classifier(path)
        self.weights_file = path
        self._setup(net, meta)

    @classmethod
    def from_network(cls, net: SmallClassifierNet, meta: dict[str, Any]) -> DatasetClassifierExtractor:
        """An extractor around an in-memory network (right after training)."""
        self = cls.__new__(cls)
        FeatureExtractor.__init__(self)
        self._setup(net, meta)
        return self

    def _setup(self, net: SmallClassifierNet, meta: dict[str, Any]) -> None:
        self.net = net
        self.meta = dict(meta)
        self.in_channels = int(meta["in_channels"])
        self.resolution = int(meta["resolution"])
        self.feature_dim = int(meta["feature_dim"])
        self.num_classes = int(meta["num_classes"])
        ds = meta.get("dataset") or "dataset"
        self.name = f"classifier-{ds}-{self.resolution}px"
        acc = meta.get("val_accuracy")
        acc_txt = f", val acc {acc:.3f}" if isinstance(acc, (int, float)) else ""
        fname = f", {self.weights_file.name}" if self.weights_file is not None else ""
        self.weights_label = f"dataset classifier ({ds}, {self.resolution}px{acc_txt}{fname})"
        self._freeze()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> float (B, in_channels, R, R) in [-1, 1]."""
        x = images.float() / 127.5 - 1.0  # (B, 3, H, W) in [-1, 1]
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(
                x, size=(self.resolution, self.resolution), mode="bilinear", antialias=True, align_corners=False
            )
        if self.in_channels == 1:
            x = x.mean(dim=1, keepdim=True)  # (B, 1, R, R)
        return x

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self._check_input(images)
        features, logits = self.net(self.preprocess(images))
        return {"features": features.float(), "logits": logits.float()}


# ---------------------------------------------------------------------------------------------- files
def save_dataset_classifier(extractor: DatasetClassifierExtractor, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``<path>.safetensors`` (weights) and ``<path>.json`` (architecture, training summary)."""
    return save_weights_with_meta(extractor.net, dict(extractor.meta, format=_CLASSIFIER_FORMAT), path)


def load_dataset_classifier(path: str | os.PathLike) -> tuple[SmallClassifierNet, dict[str, Any]]:
    """Read a classifier written by :func:`save_dataset_classifier`."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_meta_beside(path, _CLASSIFIER_FORMAT, "dataset classifier", _TRAIN_COMMAND)
    _check_architecture(meta, path.with_suffix(".json"))
    net = SmallClassifierNet(
        int(meta["in_channels"]), int(meta["num_classes"]), int(meta["width"]), int(meta["feature_dim"])
    )
    try:
        net.load_state_dict(load_file(str(path)))
    except Exception as e:
        raise CheckpointError(f"dataset classifier '{path}' does not match its json ({type(e).__name__}: {e})") from e
    return net, meta


def _check_architecture(meta: Mapping[str, Any], json_path: Path) -> None:
    """A named error for a .json without (or with a non-integer) architecture key, instead of a bare KeyError."""
    for key in _ARCHITECTURE_KEYS:
        value = meta.get(key)
        if value is None:
            problem = "has no key"
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problem = f"has {value!r}, not a positive integer, for"
        else:
            continue
        raise CheckpointError(
            f"dataset classifier '{json_path}' {problem} '{key}' (it needs {list(_ARCHITECTURE_KEYS)} to rebuild "
            f"the network). Restore the .json written with the weights, or train the classifier again: `{_TRAIN_COMMAND}`."
        )


# ---------------------------------------------------------------------------------------------- training
def _dataset_tensors(dataset: Any, max_samples: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W) uint8 images and (N,) int64 labels from a dataset of dicts or (image, label) tuples."""
    images, labels = [], []
    n = len(dataset) if max_samples is None else min(len(dataset), max_samples)
    for i in range(n):
        item = dataset[i]
        if isinstance(item, Mapping):
            if "label" not in item:
                raise DataError(
                    "train_dataset_classifier needs labelled samples: the dataset items have no 'label' key"
                )
            img, lab = item["image"], item["label"]
        else:
            img, lab = item[0], item[1]
        img = torch.as_tensor(img)
        images.append(img)
        labels.append(int(lab))
    x = torch.stack(images)  # (N, C, H, W)
    if x.dtype != torch.uint8:  # [-1, 1] floats, quantized the way generated images are before evaluation
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x, torch.tensor(labels, dtype=torch.long)


@torch.no_grad()
def _accuracy(
    extractor: DatasetClassifierExtractor, images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> float:
    correct = 0
    for xb, yb in zip(images.split(batch_size), labels.split(batch_size)):
        logits = extractor.net(extractor.preprocess(to_uint8_images(xb)))[1]
        correct += int((logits.argmax(dim=1) == yb).sum())
    return correct / max(1, len(labels))


def train_dataset_classifier(
    train_dataset: Any,
    val_dataset: Any | None = None,
    *,
    epochs: int = 15,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    val_fraction: float = 0.15,
    resolution: int | None = None,
    width: int = 32,
    feature_dim: int = 128,
    num_classes: int | None = None,
    dataset_name: str = "dataset",
    class_names: list[str] | None = None,
    seed: int = 0,
    max_samples: int | None = None,
    progress: bool = False,
) -> tuple[DatasetClassifierExtractor, dict[str, Any]]:
    """Train a :class:`SmallClassifierNet` on ``(image, label)`` samples; return the extractor and a summary.

    Items are dicts ``{"image": (C, H, W) in [-1, 1] or uint8, "label": int}`` or ``(image, label)``
    tuples. Without ``val_dataset``, ``val_fraction`` of the training set is held out (seeded).
    Images are quantized to uint8 and go through the extractor's own preprocessing, exactly as
    generated images will at evaluation. The loop is :func:`~latentgen.metrics.classifier_training.fit_classifier`.
    """
    g = torch.Generator().manual_seed(seed)
    x, y = _dataset_tensors(train_dataset, max_samples)
    if val_dataset is not None:
        x_val, y_val = _dataset_tensors(val_dataset, max_samples)
    else:
        perm = torch.randperm(len(y), generator=g)
        n_val = max(1, round(val_fraction * len(y)))
        x_val, y_val = x[perm[:n_val]], y[perm[:n_val]]
        x, y = x[perm[n_val:]], y[perm[n_val:]]
    in_channels = x.shape[1]
    if in_channels not in (1, 3):
        raise DataError(f"train_dataset_classifier: images must have 1 or 3 channels, got {in_channels}")
    resolution = int(resolution or x.shape[-1])
    num_classes = int(num_classes or int(max(y.max(), y_val.max())) + 1)
    meta: dict[str, Any] = {
        "dataset": dataset_name, "in_channels": in_channels, "resolution": resolution, "num_classes": num_classes,
        "width": width, "feature_dim": feature_dim, "epochs": epochs, "seed": seed,
        "class_names": list(class_names) if class_names is not None else None,
    }  # fmt: skip
    torch.manual_seed(seed)
    net = SmallClassifierNet(in_channels, num_classes, width, feature_dim)
    extractor = DatasetClassifierExtractor.from_network(net, meta)  # for its preprocessing; frozen until trained
    net.requires_grad_(True)
    x_in = extractor.preprocess(to_uint8_images(x))  # (N, C, R, R) in [-1, 1]

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(net(x_in[idx])[1], y[idx])

    fit = fit_classifier(net, len(y), batch_loss, epochs=epochs, batch_size=batch_size, lr=lr,
                         weight_decay=weight_decay, generator=g, progress=progress)  # fmt: skip
    extractor._freeze()
    val_acc = _accuracy(extractor, x_val, y_val, 256)
    train_acc = _accuracy(extractor, x, y, 256)
    extractor.meta.update(val_accuracy=val_acc, train_accuracy=train_acc, train_seconds=fit.seconds,
                          num_train=len(y), num_val=len(y_val))  # fmt: skip
    extractor._setup(net, extractor.meta)
    return extractor, dict(extractor.meta)


# ---------------------------------------------------------------------------------------------- factory
def dataset_classifier_extractor(
    weights_path: str | os.PathLike | None = None,
    datamodule: Any = None,
    *,
    train_if_missing: bool = True,
    dataset_name: str = "dataset",
    epochs: int = 15,
    seed: int = 0,
) -> DatasetClassifierExtractor:
    """The extractor of ``weights_path`` (a ``.safetensors`` with its ``.json``; None: ``$LATENTGEN_CLASSIFIER_WEIGHTS``).

    Given a ``datamodule``, when the file is missing and ``train_if_missing`` a classifier is first trained on
    the datamodule's labelled train split (seconds on one core; the same as this module's command line) and
    written there atomically: the f-sweep trains its classifier on first use. Without one, a missing file is
    the clear error of :class:`DatasetClassifierExtractor`.
    """
    if weights_path in (None, ""):
        return DatasetClassifierExtractor(None)
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


# ---------------------------------------------------------------------------------------------- command line
_OWN_KEYS = {
    "out": str, "epochs": int, "batch_size": int, "lr": float, "width": int, "feature_dim": int,
    "seed": int, "max_samples": int, "conf_dir": str, "progress": lambda v: v.lower() in ("1", "true", "yes"),
}  # fmt: skip


def default_conf_dir() -> Path:
    """``<repo>/conf`` for a source checkout (src layout)."""
    return Path(__file__).resolve().parents[3] / "conf"


def parse_args(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Split ``key=value`` arguments into the command's own options and Hydra overrides for ``data``."""
    opts: dict[str, Any] = {"epochs": 15, "batch_size": 64, "lr": 3e-3, "width": 32, "feature_dim": 128, "seed": 0,
                            "max_samples": None, "conf_dir": None, "progress": True}  # fmt: skip
    overrides: list[str] = []
    for arg in argv:
        if "=" not in arg:
            raise ConfigError(
                f"dataset_classifier: arguments are key=value, got {arg!r} (e.g. data=digits out=clf.safetensors)"
            )
        key, value = arg.split("=", 1)
        key = key.lstrip("+")
        if key in _OWN_KEYS:
            opts[key] = _OWN_KEYS[key](value)
        elif key == "data" or key.startswith("data."):
            overrides.append(f"+{key}={value}" if key == "data" else f"{key}={value}")
        else:
            raise ConfigError(
                f"dataset_classifier: unknown key {key!r}; use data=..., data.*=..., or one of {sorted(_OWN_KEYS)}"
            )
    if "out" not in opts:
        raise ConfigError("dataset_classifier: `out=/path/to/classifier.safetensors` is required")
    if not any(o.startswith("+data=") for o in overrides):
        raise ConfigError("dataset_classifier: choose the dataset with data=<option of conf/data> (e.g. data=digits)")
    return opts, overrides


def build_datasets(overrides: list[str], conf_dir: str | Path | None = None) -> tuple[Any, Any, str, dict[str, Any]]:
    """(train dataset, val dataset, data option name, resolved data config) from ``conf/data``."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf = Path(conf_dir) if conf_dir else default_conf_dir()
    if not (conf / "data").is_dir():
        raise ConfigError(f"dataset_classifier: no data configs in '{conf}/data'; pass conf_dir=/path/to/conf")
    name = next(o.split("=", 1)[1] for o in overrides if o.startswith("+data="))
    with initialize_config_dir(config_dir=str(conf.resolve()), version_base=None):
        cfg = compose(overrides=overrides)
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    if "dataset" in cfg.data:  # ImageDataModule config: a dataset factory (_partial_) per split
        factory = instantiate(cfg.data.dataset)
        return factory(split="train"), factory(split="val"), name, data_cfg
    dataset = instantiate(cfg.data)  # a plain dataset config: hold out part of it for validation
    return dataset, None, name, data_cfg


def main(argv: list[str] | None = None) -> int:
    """Train a classifier on a ``conf/data`` option and write it (see the module docstring)."""
    opts, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    train, val, name, data_cfg = build_datasets(overrides, opts["conf_dir"])
    resolution = int(data_cfg.get("resolution") or 0) or None
    extractor, summary = train_dataset_classifier(
        train, val,
        epochs=opts["epochs"], batch_size=opts["batch_size"], lr=opts["lr"], width=opts["width"],
        feature_dim=opts["feature_dim"], seed=opts["seed"], max_samples=opts["max_samples"],
        resolution=resolution, dataset_name=name, num_classes=getattr(train, "num_classes", None),
        class_names=getattr(train, "class_names", None), progress=opts["progress"],
    )  # fmt: skip
    weights, meta = save_dataset_classifier(extractor, opts["out"])
    shown = ("dataset", "resolution", "num_classes", "val_accuracy", "train_accuracy", "train_seconds", "num_train")
    print(json.dumps({k: summary[k] for k in (*shown, "num_val")}))
    print(f"wrote {weights} and {meta}; use: extractor=dataset_classifier extractor.weights_path={weights}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
