"""ShapesDataset: determinism, value ranges, captions/masks/labels agree with the attributes."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from latentgen.data import ShapesDataset
from latentgen.data.shapes import ATTRIBUTES, COLOUR_NAMES, KINDS, PATTERNS, POSITIONS, SIZES
from latentgen.errors import ConfigError


def _ds(**kw) -> ShapesDataset:
    kw.setdefault("num_train", 64)
    kw.setdefault("num_val", 16)
    return ShapesDataset(**kw)


def test_same_seed_same_images_and_index_matters() -> None:
    a, b = _ds(seed=7, cache=False, max_shapes=3), _ds(seed=7, cache=True, max_shapes=3)
    for i in range(8):
        sa, sb = a[i], b[i]
        assert torch.equal(sa["image"], sb["image"])
        assert torch.equal(sa["mask"], sb["mask"])
        assert sa["caption"] == sb["caption"]
        assert torch.equal(b[i]["image"], sb["image"])  # served from the cache: unchanged
    assert not torch.equal(a[0]["image"], a[1]["image"])
    assert not torch.equal(a[0]["image"], _ds(seed=8)[0]["image"])
    assert not torch.equal(a[0]["image"], _ds(seed=7, split="val", max_shapes=3)[0]["image"])


@pytest.mark.parametrize("resolution,channels", [(32, 3), (16, 1), (48, 3)])
def test_dtype_shape_range(resolution: int, channels: int) -> None:
    ds = _ds(resolution=resolution, channels=channels)
    s = ds[3]
    assert s["image"].dtype == torch.float32 and s["image"].shape == (channels, resolution, resolution)
    assert s["image"].min() >= -1.0 and s["image"].max() <= 1.0
    assert s["label"].dtype == torch.int64 and s["label"].shape == ()
    assert s["mask"].dtype == torch.int64 and s["mask"].shape == (resolution, resolution)
    assert isinstance(s["caption"], str)
    assert ds.num_classes == len(KINDS) == 6 and ds.class_names == list(KINDS)
    assert len(ds) == 64 and len(_ds(split="val")) == 16


def test_gray_is_luma_of_rgb() -> None:
    rgb, gray = _ds(channels=3)[5]["image"], _ds(channels=1)[5]["image"]
    luma = (rgb + 1) * 127.5
    luma = 0.299 * luma[0] + 0.587 * luma[1] + 0.114 * luma[2]
    assert torch.allclose(gray[0], luma.round() / 127.5 - 1, atol=1.5 / 127.5)


_CAPTION = re.compile(
    rf"a ({'|'.join(SIZES)})(?: ({'|'.join(PATTERNS)}))? ({'|'.join(COLOUR_NAMES)}) ({'|'.join(KINDS)}) "
    rf"at the ({'|'.join(POSITIONS)})"
)


def test_caption_mask_label_match_attributes() -> None:
    ds = _ds(max_shapes=3, num_train=120)
    seen_kinds = set()
    for i in range(len(ds)):
        s, attrs = ds[i], ds.attributes(i)
        shapes = attrs["shapes"]
        assert 1 <= attrs["num_shapes"] == len(shapes) <= 3
        assert len({sh["position"] for sh in shapes}) == len(shapes)  # one shape per grid cell
        parts = s["caption"].split(" and ")
        assert len(parts) == len(shapes)
        for part, sh in zip(parts, shapes):
            m = _CAPTION.fullmatch(part)
            assert m is not None, part
            size, pattern, colour, kind, position = m.groups()
            assert (size, colour, kind, position) == (
                sh["size_name"],
                sh["colour_name"],
                sh["kind_name"],
                sh["position_name"],
            )
            assert (pattern or "plain") == sh["pattern_name"]
        assert int(s["label"]) == attrs["kind"] == shapes[0]["kind"]
        assert attrs["caption"] == s["caption"]
        present = set(s["mask"].unique().tolist())
        assert present == {0} | {sh["kind"] + 1 for sh in shapes}
        seen_kinds.add(attrs["kind"])
    assert seen_kinds == set(range(len(KINDS)))


def test_mask_marks_where_the_shape_is() -> None:
    """Pixels of the main shape are far from the background colour at their location."""
    ds = _ds(resolution=64, num_train=10)
    for i in range(10):
        s, attrs = ds[i], ds.attributes(i)
        mask = s["mask"]
        fg = mask == attrs["kind"] + 1
        assert fg.sum() >= 4
        # the shape sits in its grid cell
        row, col = divmod(attrs["position"], 3)
        ys, xs = torch.nonzero(fg, as_tuple=True)
        cy, cx = ys.float().mean() / 64, xs.float().mean() / 64
        assert row / 3 <= cy <= (row + 1) / 3 and col / 3 <= cx <= (col + 1) / 3


def test_return_attributes_collates() -> None:
    ds = _ds(return_attributes=True, max_shapes=2)
    batch = default_collate([ds[i] for i in range(4)])
    assert set(batch["attributes"]) == set(ATTRIBUTES) | {"num_shapes"}
    for key, names in ATTRIBUTES.items():
        v = batch["attributes"][key]
        assert v.shape == (4,) and v.dtype == torch.int64 and 0 <= int(v.min()) and int(v.max()) < len(names)
    assert torch.equal(batch["attributes"]["kind"], batch["label"])


def test_fast_enough() -> None:
    ds = _ds(cache=False, num_train=200)
    t = time.perf_counter()
    for i in range(200):
        ds[i]
    per_image = (time.perf_counter() - t) / 200
    assert per_image < 5e-3, f"{per_image * 1e3:.2f} ms per 32x32 image"  # ~0.5 ms on an idle core


@pytest.mark.parametrize(
    "kw",
    [
        dict(max_shapes=0),
        dict(max_shapes=10),
        dict(channels=2),
        dict(resolution=0),
        dict(split="test"),
        dict(num_train=0),
    ],
)
def test_bad_config(kw: dict) -> None:
    with pytest.raises(ConfigError):
        _ds(**kw)


def test_index_out_of_range() -> None:
    ds = _ds()
    with pytest.raises(IndexError):
        ds[len(ds)]
    assert torch.equal(ds[-1]["image"], ds[len(ds) - 1]["image"])
    # (index, epoch) keys give the same image: shapes have no augmentation
    assert torch.equal(ds[(3, 5)]["image"], ds[3]["image"])
    assert np.isfinite(ds[0]["image"].numpy()).all()


def test_pinned_scenes() -> None:
    """Image i is part of the dataset's identity: a change here must bump shapes.SCENE_VERSION."""
    ds = _ds(max_shapes=3)
    assert ds.attributes(0)["caption"] == (
        "a small yellow ring at the bottom left and a large spotted yellow square at the top right "
        "and a large green star at the bottom right"
    )
    assert ds.attributes(2)["caption"] == "a large spotted blue cross at the middle left"
    assert abs(float(ds[0]["image"].mean()) - -0.5463) < 2e-3
    assert abs(float(ds[2]["image"].mean()) - -0.3713) < 2e-3
