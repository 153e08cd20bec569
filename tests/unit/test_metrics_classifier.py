"""Dataset-classifier extractor: trains fast to high accuracy, saves/loads, clear errors, CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from latentgen.errors import CheckpointError, ConfigError, WeightsNotFoundError
from latentgen.metrics.dataset_classifier import (
    DatasetClassifierExtractor,
    save_dataset_classifier,
    train_dataset_classifier,
)


class _Digits(torch.utils.data.Dataset):
    """sklearn digits as {"image": (1, 16, 16) in [-1, 1], "label"} (independent of latentgen.data)."""

    def __init__(self, lo: int, hi: int) -> None:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.images[lo:hi], dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
        self.x = F.interpolate(x, size=16, mode="bilinear", align_corners=False) * 2 - 1
        self.y = torch.tensor(d.target[lo:hi])

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": self.y[i]}


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    return train_dataset_classifier(_Digits(0, 1000), _Digits(1400, 1797), epochs=6, dataset_name="digits-test")


def test_trains_to_high_val_accuracy_quickly(trained):
    ex, info = trained
    assert info["val_accuracy"] > 0.85, info
    assert info["train_seconds"] < 60
    assert ex.feature_dim == 128 and ex.has_logits and ex.num_classes == 10
    assert ex.name == "classifier-digits-test-16px" and "val acc" in ex.weights_label
    u8 = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)  # any size: resized, grey-averaged inside
    out = ex(u8)
    assert out["features"].shape == (3, 128) and out["logits"].shape == (3, 10)


def test_save_load_roundtrip_and_errors(trained, tmp_path, monkeypatch):
    ex, _ = trained
    weights, meta = save_dataset_classifier(ex, tmp_path / "clf")
    assert weights.suffix == ".safetensors" and json.loads(meta.read_text())["num_classes"] == 10
    loaded = DatasetClassifierExtractor(weights_path=str(weights))
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    torch.testing.assert_close(loaded(x)["features"], ex(x)["features"])
    assert loaded.fingerprint() != "" and loaded.name == ex.name
    monkeypatch.delenv("LATENTGEN_CLASSIFIER_WEIGHTS", raising=False)
    with pytest.raises(
        WeightsNotFoundError, match=r"missing\.safetensors.*extractor\.weights_path.*LATENTGEN_CLASSIFIER_WEIGHTS"
    ):
        DatasetClassifierExtractor(weights_path=str(tmp_path / "missing.safetensors"))
    with pytest.raises(WeightsNotFoundError, match="extractor.weights_path"):
        DatasetClassifierExtractor(weights_path=None)
    meta.unlink()
    with pytest.raises(CheckpointError, match=r"clf\.json"):
        DatasetClassifierExtractor(weights_path=str(weights))


@pytest.mark.parametrize(("key", "value"), [("feature_dim", None), ("in_channels", None), ("width", "wide")])
def test_a_json_without_an_architecture_key_is_a_named_error(trained, tmp_path, key, value):
    ex, _ = trained
    weights, meta_path = save_dataset_classifier(ex, tmp_path / "clf")
    meta = json.loads(meta_path.read_text())
    if value is None:
        del meta[key]
    else:
        meta[key] = value
    meta_path.write_text(json.dumps(meta))
    # was a bare KeyError('feature_dim'), naming neither the file nor what to do
    with pytest.raises(CheckpointError, match=rf"clf\.json.*'{key}'.*python -m latentgen\.metrics\.dataset_classifier"):
        DatasetClassifierExtractor(weights_path=str(weights))


def test_the_config_factory_loads_or_trains_on_first_use(trained, tmp_path, monkeypatch):
    from latentgen.metrics.dataset_classifier import dataset_classifier_extractor

    ex, _ = trained
    weights, _ = save_dataset_classifier(ex, tmp_path / "clf")
    loaded = dataset_classifier_extractor(str(tmp_path / "clf"))  # the suffix is added
    assert loaded.fingerprint() == DatasetClassifierExtractor(weights_path=str(weights)).fingerprint()
    monkeypatch.delenv("LATENTGEN_CLASSIFIER_WEIGHTS", raising=False)
    with pytest.raises(WeightsNotFoundError, match="extractor.weights_path"):
        dataset_classifier_extractor(None)  # conf/extractor/dataset_classifier.yaml as shipped

    class _DataModule:
        resolution = 16

        def setup(self, stage):
            pass

        def dataset(self, split):
            return _Digits(0, 300) if split == "train" else _Digits(1400, 1500)

    trained_now = dataset_classifier_extractor(tmp_path / "new.safetensors", _DataModule(), epochs=1)
    assert (tmp_path / "new.safetensors").is_file() and (tmp_path / "new.json").is_file()
    assert trained_now.num_classes == 10 and not list(tmp_path.glob(".new*"))


def test_cli_trains_on_a_conf_data_option(tmp_path, capsys):
    from latentgen.metrics import dataset_classifier

    out = tmp_path / "digits_clf"
    rc = dataset_classifier.main(
        ["data=digits", "data.resolution=16", f"out={out}", "epochs=1", "max_samples=256", "progress=false"]
    )
    assert rc == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["dataset"] == "digits" and meta["resolution"] == 16 and meta["num_classes"] == 10
    assert meta["class_names"] == [str(i) for i in range(10)]
    assert "val_accuracy" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="out="):
        dataset_classifier.main(["data=digits"])
    with pytest.raises(ConfigError, match="unknown key"):
        dataset_classifier.main(["data=digits", "out=x", "lr_typo=1"])
