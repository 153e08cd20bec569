"""PatchesDataset: bundled skimage photographs load offline; val is fixed; train/val are disjoint."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from latentgen.data import PatchesDataset
from latentgen.data import patches as patches_module
from latentgen.errors import ConfigError, DataError


def test_all_bundled_images_load_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("PatchesDataset tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    patches_module.load_skimage.cache_clear()
    ds = PatchesDataset(split="val", num_val=4)
    assert ds.image_names == list(patches_module.ALL_IMAGES) and not ds.failed
    s = ds[0]
    assert set(s) == {"image"} and ds.num_classes is None and ds.class_names is None
    assert s["image"].shape == (3, 32, 32) and s["image"].dtype == torch.float32
    assert s["image"].min() >= -1 and s["image"].max() <= 1


def test_val_is_fixed_and_train_depends_on_epoch() -> None:
    a, b = PatchesDataset(split="val", num_val=8), PatchesDataset(split="val", num_val=8)
    for i in range(8):
        assert torch.equal(a[i]["image"], b[i]["image"])
    assert not torch.equal(a[0]["image"], a[1]["image"])
    assert not torch.equal(a[0]["image"], PatchesDataset(split="val", seed=1)[0]["image"])

    train = PatchesDataset(split="train", num_train=8)
    assert torch.equal(train[(3, 0)]["image"], PatchesDataset(split="train", num_train=8)[(3, 0)]["image"])
    assert not torch.equal(train[(3, 0)]["image"], train[(3, 1)]["image"])
    # a plain index on the train split is random per access (from the torch RNG)
    torch.manual_seed(0)
    first = train[3]["image"]
    assert not torch.equal(first, train[3]["image"])
    torch.manual_seed(0)
    assert torch.equal(first, train[3]["image"])


def test_train_and_val_regions_are_disjoint() -> None:
    train, val = PatchesDataset(split="train"), PatchesDataset(split="val")
    for rt, rv in zip(train.regions, val.regions):
        assert rt.name == rv.name
        src = patches_module.load_skimage(rt.name)
        axis = 0 if src.shape[0] > src.shape[1] else 1
        assert rt.pixels.shape[axis] + rv.pixels.shape[axis] == src.shape[axis]
        assert rt.pixels.shape[1 - axis] == rv.pixels.shape[1 - axis] == src.shape[1 - axis]
        assert not np.shares_memory(rt.pixels, rv.pixels)
        assert rv.pixels.shape[axis] >= 0.15 * src.shape[axis]


def test_channels_crop_and_jitter() -> None:
    gray = PatchesDataset(channels=1, resolution=16, split="val", num_val=2)
    assert gray[0]["image"].shape == (1, 16, 16)
    native = PatchesDataset(resolution=24, crop_size=24, scale_jitter=0.3, split="train", num_train=4)
    for i in range(4):
        assert native[(i, 0)]["image"].shape == (3, 24, 24)
    big = PatchesDataset(resolution=16, crop_size=10_000, images=["coins"], split="val", num_val=1)
    assert big[0]["image"].shape == (3, 16, 16)  # crop clipped to the region, then resized


def test_failed_image_is_skipped_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    real = patches_module.load_skimage

    def flaky(name: str) -> np.ndarray:
        if name == "coffee":
            raise OSError("simulated missing file")
        return real(name)

    monkeypatch.setattr(patches_module, "load_skimage", flaky)
    with pytest.warns(UserWarning, match="coffee"):
        ds = PatchesDataset(images=["astronaut", "coffee"], split="val", num_val=2)
    assert ds.image_names == ["astronaut"] and "coffee" in ds.failed

    def broken(name: str) -> np.ndarray:
        raise OSError("simulated")

    monkeypatch.setattr(patches_module, "load_skimage", broken)
    with pytest.warns(UserWarning), pytest.raises(DataError, match="none of the skimage images"):
        PatchesDataset(images=["astronaut"], split="val")


def test_bad_config() -> None:
    with pytest.raises(ConfigError, match="brain"):
        PatchesDataset(images=["astronaut", "brain"])  # brain needs a download
    with pytest.raises(ConfigError, match="num_val"):
        PatchesDataset(num_val=0)
