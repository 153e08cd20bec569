"""ImageFolderDataset on small trees built in tmp_path: formats, labels, captions, bad files, errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentgen.data import DataWarning, ImageFolderDataset
from latentgen.errors import ConfigError, DataError

RES = 16


def _noise(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, c), dtype=np.uint8)


def _all_formats(root: Path) -> dict[str, Path]:
    """One file per format/mode worth converting, some nested, some with odd extensions."""
    (root / "nested" / "deeper").mkdir(parents=True)
    files = {
        "png": root / "rgb.png",
        "jpg": root / "photo.jpg",
        "jpeg_upper": root / "nested" / "PHOTO2.JPEG",
        "webp": root / "nested" / "img.webp",
        "bmp": root / "nested" / "deeper" / "img.bmp",
        "gray": root / "gray.png",
        "rgba": root / "rgba.png",
        "gray16": root / "gray16.png",
        "cmyk": root / "cmyk.jpg",
        "palette": root / "palette.png",
        "palette_t": root / "palette_t.png",
        "la": root / "la.png",
    }
    Image.fromarray(_noise(20, 24)).save(files["png"])
    Image.fromarray(_noise(30, 20, seed=1)).save(files["jpg"], quality=95)
    Image.fromarray(_noise(18, 40, seed=2)).save(files["jpeg_upper"], quality=95)
    Image.fromarray(_noise(RES, RES, seed=3)).save(files["webp"], lossless=True)
    Image.fromarray(_noise(RES, RES, seed=4)).save(files["bmp"])
    Image.fromarray(np.full((RES, RES), 200, np.uint8), mode="L").save(files["gray"])
    rgba = np.zeros((RES, RES, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, : RES // 2, 3] = 255  # left half opaque red, right half fully transparent
    Image.fromarray(rgba, mode="RGBA").save(files["rgba"])
    Image.fromarray(np.full((RES, RES), 128 * 257, np.uint16)).save(files["gray16"])  # mode I;16
    Image.new("CMYK", (RES, RES), (255, 0, 0, 0)).save(files["cmyk"], quality=100)  # pure cyan
    Image.new("RGB", (RES, RES), (0, 0, 255)).convert("P", palette=Image.Palette.ADAPTIVE).save(files["palette"])
    pal = Image.new("P", (RES, RES), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * (3 * 254))
    pal.save(files["palette_t"], transparency=1)  # every pixel transparent -> white
    Image.new("LA", (RES, RES), (0, 255)).save(files["la"])
    (root / ".hidden.png").write_bytes(b"not an image, but hidden")
    (root / "notes.md").write_text("ignored")
    return files


def _by_name(ds: ImageFolderDataset) -> dict[str, torch.Tensor]:
    return {p.name: ds[i]["image"] for i, p in enumerate(ds.files)}


def _pm1(v: float) -> float:
    return v / 127.5 - 1


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, atol=1e-6)


def test_every_format_loads_as_rgb_in_range(tmp_path: Path) -> None:
    files = _all_formats(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about
        ds = ImageFolderDataset(tmp_path, resolution=RES, split="train", val_fraction=0.0)
    assert sorted(p.name for p in ds.files) == sorted(p.name for p in files.values())
    assert ds.num_skipped == 0 and ds.num_classes is None
    imgs = _by_name(ds)
    for name, x in imgs.items():
        assert x.shape == (3, RES, RES) and x.dtype == torch.float32, name
        assert x.min() >= -1 and x.max() <= 1, name
    assert _close(imgs["gray.png"], torch.full((3, RES, RES), _pm1(200)))
    assert _close(imgs["gray16.png"], torch.full((3, RES, RES), _pm1(128)))  # 16 bit scaled, not clipped
    rgba = imgs["rgba.png"]
    assert _close(rgba[:, :, : RES // 2 - 1], torch.tensor([1.0, -1, -1]).view(3, 1, 1))  # opaque red
    assert _close(rgba[:, :, RES // 2 + 1 :], torch.ones(3, RES, RES // 2 - 1))  # transparent -> white
    assert _close(imgs["palette_t.png"], torch.ones(3, RES, RES))
    assert _close(imgs["palette.png"], torch.tensor([-1.0, -1, 1]).view(3, 1, 1).expand(3, RES, RES))
    assert _close(imgs["la.png"], torch.full((3, RES, RES), -1.0))
    cyan = imgs["cmyk.jpg"].mean(dim=(1, 2))
    assert cyan[0] < -0.8 and cyan[1] > 0.8 and cyan[2] > 0.8


def test_gray_output_and_resize_crop(tmp_path: Path) -> None:
    _all_formats(tmp_path)
    ds = ImageFolderDataset(tmp_path, resolution=8, channels=1, split="train", val_fraction=0.0)
    for i in range(len(ds)):
        assert ds[i]["image"].shape == (1, 8, 8)
    wide = ImageFolderDataset(tmp_path / "nested", resolution=12, val_fraction=0.0)
    assert all(wide[i]["image"].shape == (3, 12, 12) for i in range(len(wide)))


def test_random_crop_and_flip_are_keyed_by_epoch(tmp_path: Path) -> None:
    Image.fromarray(_noise(40, 64)).save(tmp_path / "wide.png")
    Image.fromarray(_noise(40, 64, seed=5)).save(tmp_path / "wide2.png")
    kw = dict(resolution=RES, crop="random", flip=True, val_fraction=0.5)
    train, val = ImageFolderDataset(tmp_path, split="train", **kw), ImageFolderDataset(tmp_path, split="val", **kw)
    again = ImageFolderDataset(tmp_path, split="train", **kw)
    assert torch.equal(train[(0, 4)]["image"], again[(0, 4)]["image"])
    assert any(not torch.equal(train[(0, 0)]["image"], train[(0, e)]["image"]) for e in range(1, 4))
    assert torch.equal(val[0]["image"], val[0]["image"])  # val: centre crop, never flipped
    center = ImageFolderDataset(tmp_path, split="val", resolution=RES, val_fraction=0.5)
    assert torch.equal(val[0]["image"], center[0]["image"])


def test_split_by_seed_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    for i in range(20):
        Image.fromarray(_noise(8, 8, seed=i)).save(tmp_path / f"{i:02d}.png")
    kw = dict(resolution=8, val_fraction=0.25)
    train, val = ImageFolderDataset(tmp_path, split="train", **kw), ImageFolderDataset(tmp_path, split="val", **kw)
    assert len(val) == 5 and len(train) == 15 and not set(train.files) & set(val.files)
    assert ImageFolderDataset(tmp_path, split="val", **kw).files == val.files
    assert ImageFolderDataset(tmp_path, split="val", seed=3, **kw).files != val.files


def test_labels_from_subfolders_and_captions(tmp_path: Path) -> None:
    for cls in ("dog", "cat", "bird"):
        (tmp_path / cls / "sub").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(_noise(10, 10, seed=i)).save(tmp_path / cls / f"{i}.png")
        Image.fromarray(_noise(10, 10, seed=9)).save(tmp_path / cls / "sub" / "deep.png")  # label = first level
        (tmp_path / cls / "0.txt").write_text(f"  a photo of a {cls}\n", encoding="utf-8")
    (tmp_path / "empty_class").mkdir()  # no images: not a class
    with pytest.warns(DataWarning, match="no sidecar"):
        ds = ImageFolderDataset(tmp_path, resolution=8, labels_from_subfolders=True, val_fraction=0.0)
    assert ds.class_names == ["bird", "cat", "dog"] and ds.num_classes == 3
    for i, path in enumerate(ds.files):
        s = ds[i]
        rel = path.relative_to(tmp_path).parts
        assert ds.class_names[int(s["label"])] == rel[0] and s["label"].dtype == torch.int64
        assert s["caption"] == (f"a photo of a {rel[0]}" if path.name == "0.png" and len(rel) == 2 else "")
    # stratified split: every class in val
    with pytest.warns(DataWarning):
        val = ImageFolderDataset(tmp_path, resolution=8, labels_from_subfolders=True, val_fraction=0.34, split="val")
    assert {int(val[i]["label"]) for i in range(len(val))} == {0, 1, 2}

    Image.fromarray(_noise(10, 10)).save(tmp_path / "stray.png")
    with pytest.raises(DataError, match="stray.png"):
        ImageFolderDataset(tmp_path, resolution=8, labels_from_subfolders=True)


def test_train_and_val_folders_are_used(tmp_path: Path) -> None:
    for split, n in (("train", 6), ("val", 2)):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(_noise(8, 8, seed=i)).save(tmp_path / split / cls / f"{i}.png")
    train = ImageFolderDataset(tmp_path, resolution=8, split="train", labels_from_subfolders=True)
    val = ImageFolderDataset(tmp_path, resolution=8, split="val", labels_from_subfolders=True)
    assert train.split_dirs and len(train) == 12 and len(val) == 4
    assert all("val" in p.parts for p in val.files) and val.class_names == ["a", "b"]
    (tmp_path / "val" / "c").mkdir()
    Image.fromarray(_noise(8, 8)).save(tmp_path / "val" / "c" / "x.png")
    with pytest.raises(DataError, match="'c'"):
        ImageFolderDataset(tmp_path, resolution=8, split="val", labels_from_subfolders=True)


def _tree_with_bad(root: Path, n_good: int, n_bad: int) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_good):
        Image.fromarray(_noise(8, 8, seed=i)).save(root / f"good{i:02d}.png")
    bad = []
    for i in range(n_bad):
        p = root / f"bad{i}.png"
        p.write_bytes(b"\x89PNG definitely not a png")
        bad.append(p)
    return bad


def test_corrupt_file_is_skipped_with_a_warning(tmp_path: Path) -> None:
    (bad,) = _tree_with_bad(tmp_path, 30, 1)
    with pytest.warns(DataWarning, match=str(bad.name)):
        ds = ImageFolderDataset(tmp_path, resolution=8, val_fraction=0.0)
    assert ds.num_skipped == 1 and len(ds) == 30 and bad not in ds.files and str(bad) in ds.bad_files


def test_too_many_corrupt_files_raise(tmp_path: Path) -> None:
    _tree_with_bad(tmp_path, 10, 3)
    with pytest.warns(DataWarning), pytest.raises(DataError, match=r"3 of 13 images .*bad0.png"):
        ImageFolderDataset(tmp_path, resolution=8, val_fraction=0.0)
    with pytest.warns(DataWarning):
        ok = ImageFolderDataset(tmp_path, resolution=8, val_fraction=0.0, max_bad_fraction=0.5)
    assert ok.num_skipped == 3


def test_file_that_verifies_but_fails_to_decode(tmp_path: Path) -> None:
    for i in range(3):
        Image.fromarray(_noise(32, 32, seed=i)).save(tmp_path / f"{i}.jpg", quality=90)
    data = (tmp_path / "1.jpg").read_bytes()
    (tmp_path / "1.jpg").write_bytes(data[: len(data) // 2])  # truncated: verify() passes, decoding fails
    ds = ImageFolderDataset(tmp_path, resolution=8, val_fraction=0.0, max_bad_fraction=0.5)
    assert ds.num_skipped == 0 and len(ds) == 3
    with pytest.warns(DataWarning, match="1.jpg"):
        s = ds[1]
    assert ds.num_skipped == 1 and torch.equal(s["image"], ds[2]["image"])  # replaced by the next good one
    strict = ImageFolderDataset(tmp_path, resolution=8, val_fraction=0.0, max_bad_fraction=0.0)
    with pytest.warns(DataWarning), pytest.raises(DataError, match="1 of 3"):
        strict[1]


def test_missing_empty_and_unset_roots(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does_not_exist"):
        ImageFolderDataset(tmp_path / "does_not_exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        ImageFolderDataset(tmp_path / "empty")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    with pytest.raises(DataError, match="no images"):
        ImageFolderDataset(tmp_path / "texts")
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(DataError, match="is a file"):
        ImageFolderDataset(tmp_path / "file.png")
    with pytest.raises(ConfigError, match="data.root"):
        ImageFolderDataset("???")
    with pytest.raises(ConfigError, match="crop"):
        ImageFolderDataset(tmp_path, crop="left")
