"""DigitsDataset: labels, deterministic stratified split, resizing, channels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentgen.data import DigitsDataset
from latentgen.data import digits as digits_module
from latentgen.errors import ConfigError


def test_split_is_disjoint_complete_stratified_and_seeded() -> None:
    train, val = DigitsDataset(split="train"), DigitsDataset(split="val")
    assert len(train) + len(val) == 1797
    assert not set(train.indices.tolist()) & set(val.indices.tolist())
    assert 0.08 < len(val) / 1797 < 0.12
    val_labels = torch.stack([val[i]["label"] for i in range(len(val))])
    assert set(val_labels.tolist()) == set(range(10))  # stratified: every class in val
    assert np.array_equal(DigitsDataset(split="val").indices, val.indices)
    assert not np.array_equal(DigitsDataset(split="val", seed=1).indices, val.indices)
    assert len(DigitsDataset(split="val", val_fraction=0.2)) > len(val)


@pytest.mark.parametrize("resolution,channels", [(32, 1), (16, 3), (8, 1)])
def test_sample_format(resolution: int, channels: int) -> None:
    ds = DigitsDataset(resolution=resolution, channels=channels)
    s = ds[0]
    assert s["image"].shape == (channels, resolution, resolution) and s["image"].dtype == torch.float32
    assert s["image"].min() >= -1 and s["image"].max() <= 1
    assert s["image"].min() == -1  # the background of a digit is 0 -> -1
    assert s["label"].dtype == torch.int64 and s["label"].shape == () and 0 <= int(s["label"]) <= 9
    assert str(int(s["label"])) in ds.class_names and ds.num_classes == 10
    if channels == 3:
        assert torch.equal(s["image"][0], s["image"][2])
    assert "digit" in s["caption"]


def test_matches_sklearn_at_native_resolution() -> None:
    from sklearn.datasets import load_digits

    raw = load_digits()
    ds = DigitsDataset(resolution=8)
    for i in (0, 10, 100):
        j = int(ds.indices[i])
        assert int(ds[i]["label"]) == int(raw.target[j])
        assert torch.allclose(ds[i]["image"][0], torch.tensor(raw.images[j] / 8.0 - 1.0, dtype=torch.float32))


def test_per_access_resize_equals_precomputed(monkeypatch: pytest.MonkeyPatch) -> None:
    pre = DigitsDataset(resolution=24, channels=3)
    monkeypatch.setattr(digits_module, "_PRECOMPUTE_MAX_BYTES", 0)
    lazy = DigitsDataset(resolution=24, channels=3)
    assert lazy._cache is None and pre._cache is not None
    for i in (0, 5):
        assert torch.allclose(pre[i]["image"], lazy[i]["image"], atol=1e-6)


def test_bad_config() -> None:
    with pytest.raises(ConfigError, match="val_fraction"):
        DigitsDataset(val_fraction=1.5)
    with pytest.raises(ConfigError, match="interpolation"):
        DigitsDataset(interpolation="nearest-ish")
    with pytest.raises(ConfigError, match="channels"):
        DigitsDataset(channels=4)
