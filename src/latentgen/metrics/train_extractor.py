"""Train the dataset classifier that serves as a feature extractor on embedded datasets.

Inception features say little about 32 px digits or shapes; a small CNN trained on the dataset's own
labels gives features (penultimate layer, 128-d) and logits for FID / KID / PR / DC / IS there.

    python -m latentgen.metrics.train_extractor data=digits out=.cache/latentgen/extractors/digits_32px.safetensors
    python -m latentgen.metrics.train_extractor data=shapes data.resolution=64 epochs=20 out=...

Arguments are ``key=value``: ``data=<conf/data option>`` and any ``data.*`` override are composed from
the project's ``conf/`` with Hydra; ``out`` (required), ``epochs`` (15), ``batch_size`` (64), ``lr``
(3e-3), ``width`` (32), ``feature_dim`` (128), ``seed`` (0), ``max_samples`` (all), ``conf_dir`` and
``progress`` (true) are this script's. It writes ``<out>.safetensors`` + ``<out>.json`` and prints
the validation accuracy and training time; then use ``extractor=dataset_classifier
extractor.weights_path=<out>.safetensors``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from latentgen.errors import ConfigError

_OWN_KEYS = {
    "out": str, "epochs": int, "batch_size": int, "lr": float, "width": int, "feature_dim": int,
    "seed": int, "max_samples": int, "conf_dir": str, "progress": lambda v: v.lower() in ("1", "true", "yes"),
}  # fmt: skip


def default_conf_dir() -> Path:
    """``<repo>/conf`` for a source checkout (src layout)."""
    return Path(__file__).resolve().parents[3] / "conf"


def parse_args(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Split ``key=value`` arguments into this script's options and Hydra overrides for ``data``."""
    opts: dict[str, Any] = {"epochs": 15, "batch_size": 64, "lr": 3e-3, "width": 32, "feature_dim": 128, "seed": 0,
                            "max_samples": None, "conf_dir": None, "progress": True}  # fmt: skip
    overrides: list[str] = []
    for arg in argv:
        if "=" not in arg:
            raise ConfigError(
                f"train_extractor: arguments are key=value, got {arg!r} (e.g. data=digits out=clf.safetensors)"
            )
        key, value = arg.split("=", 1)
        key = key.lstrip("+")
        if key in _OWN_KEYS:
            opts[key] = _OWN_KEYS[key](value)
        elif key == "data" or key.startswith("data."):
            overrides.append(f"+{key}={value}" if key == "data" else f"{key}={value}")
        else:
            raise ConfigError(
                f"train_extractor: unknown key {key!r}; use data=..., data.*=..., or one of {sorted(_OWN_KEYS)}"
            )
    if "out" not in opts:
        raise ConfigError("train_extractor: `out=/path/to/classifier.safetensors` is required")
    if not any(o.startswith("+data=") for o in overrides):
        raise ConfigError("train_extractor: choose the dataset with data=<option of conf/data> (e.g. data=digits)")
    return opts, overrides


def build_datasets(overrides: list[str], conf_dir: str | Path | None = None) -> tuple[Any, Any, str, dict[str, Any]]:
    """(train dataset, val dataset, data option name, resolved data config) from ``conf/data``."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf = Path(conf_dir) if conf_dir else default_conf_dir()
    if not (conf / "data").is_dir():
        raise ConfigError(f"train_extractor: no data configs in '{conf}/data'; pass conf_dir=/path/to/conf")
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
    opts, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    from latentgen.metrics.extractors import save_dataset_classifier, train_dataset_classifier

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
