"""GenerativeMetrics (batch-wise features) and the reference-feature disk cache.

(The DDP cat-sync of the feature states runs in two processes: tests/integration/test_metrics_ddp.py.)
"""

from __future__ import annotations

import pytest
import torch

from latentgen.errors import CheckpointError, ConfigError, DataError
from latentgen.metrics import (
    GenerativeMetrics,
    ReferenceCache,
    ReferenceKey,
    density_coverage,
    frechet_distance_from_features,
    inception_score,
    kernel_inception_distance,
    precision_recall,
    reference_features,
)
from tests.helpers import TinyExtractor
from tests.helpers import random_images as _images

ALL = ["fid", "kid", "prc", "density_coverage", "is"]


def _kw():
    return {"kid_subset_size": 40, "kid_subsets": 10, "is_splits": 4}


def test_compute_equals_the_functions_on_the_same_features():
    ex = TinyExtractor()
    gm = GenerativeMetrics(ex, metrics=ALL, **_kw())
    real, fake = _images(90, 0), _images(70, 1, bright=0.2)
    for chunk in real.split(32):
        gm.update(chunk, real=True)
    for chunk in fake.split(25):
        gm.update(chunk, real=False)
    res = gm.compute()
    with torch.no_grad():
        out_r, out_f = ex(_u8(real)), ex(_u8(fake))
    fr, ff = out_r["features"], out_f["features"]
    assert res["num_real"] == 90 and res["num_fake"] == 70
    assert res["fid"] == pytest.approx(frechet_distance_from_features(fr, ff), rel=1e-6)
    kid_mean, kid_std = kernel_inception_distance(ff, fr, subset_size=40, subsets=10, seed=2020)
    assert res["kid_mean"] == pytest.approx(kid_mean, rel=1e-6) and res["kid_std"] == pytest.approx(kid_std, rel=1e-6)
    pr, dc = precision_recall(fr, ff), density_coverage(fr, ff)
    assert (res["precision"], res["recall"]) == (pr["precision"], pr["recall"])
    assert (res["density"], res["coverage"]) == (dc["density"], dc["coverage"])
    assert res["is_mean"] == pytest.approx(inception_score(out_f["logits"], splits=4)[0], rel=1e-9)
    assert res["fid"] > 0 and res["kid_mean"] > 0


def _u8(x):
    from latentgen.metrics import to_uint8_images

    return to_uint8_images(x)


def test_uint8_and_float_inputs_agree_and_reference_path_equals_real_batches():
    ex = TinyExtractor()
    real, fake = _images(50, 2), _images(50, 3)
    a = GenerativeMetrics(ex, metrics=["fid", "prc"])
    a.update(real, real=True)
    a.update(fake)
    b = GenerativeMetrics(ex, metrics=["fid", "prc"])
    b.set_reference(ex(_u8(real))["features"])
    b.update(_u8(fake))  # uint8 input
    ra, rb = a.compute(), b.compute()
    assert ra["fid"] == pytest.approx(rb["fid"], rel=1e-9)
    assert ra["precision"] == rb["precision"]
    assert "extractor" not in dict(a.named_modules()) and not any("proj" in k for k in a.state_dict())
    with pytest.raises(ConfigError, match="set_reference"):
        b.update(real, real=True)


def test_bad_configs_and_inputs():
    with pytest.raises(ConfigError, match="unknown names"):
        GenerativeMetrics(TinyExtractor(), metrics=["fid", "fd_dinov3"])
    gm = GenerativeMetrics(TinyExtractor(), metrics=["fid"])
    gm.update(_images(4, 0), real=True)
    with pytest.raises(DataError, match="no generated samples"):
        gm.compute()
    gm2 = GenerativeMetrics(TinyExtractor(), metrics=["prc"])
    gm2.update(_images(2, 0), real=True)
    gm2.update(_images(10, 1))
    with pytest.raises(ConfigError, match=r"k=3.*num_samples=2"):
        gm2.compute()


def test_kid_subset_shrinks_with_a_warning():
    gm = GenerativeMetrics(TinyExtractor(), metrics=["kid"], kid_subset_size=1000, kid_subsets=5)
    gm.update(_images(30, 0), real=True)
    gm.update(_images(20, 1))
    with pytest.warns(UserWarning, match="kid_subset_size=1000"):
        res = gm.compute()
    assert res["kid_subset_size"] == 20


# ----------------------------------------------------------------------------------------------- cache

DATA_CFG = {"_target_": "latentgen.data.Digits", "resolution": 16, "batch_size": 32, "num_workers": 0}


def _key(ex, **over):
    kw = {"dataset": DATA_CFG, "split": "val", "resolution": 16, "extractor": ex, "num_samples": 40} | over
    return ReferenceKey.create(**kw)


def test_reference_cache_hit_and_keys(tmp_path):
    cache = ReferenceCache(tmp_path)
    ex = TinyExtractor()
    data = _images(64, 5)
    made = []

    def batches():
        made.append(1)
        return data.split(16)

    first = reference_features(cache, _key(ex), ex, batches)
    assert not first.from_cache and first.features.shape == (40, 64) and first.path.is_file()
    calls = ex.calls
    second = reference_features(cache, _key(ex), ex, batches)
    assert second.from_cache and ex.calls == calls and len(made) == 1  # no extraction, no loader
    torch.testing.assert_close(second.features, first.features)
    assert second.logits is not None and second.logits.shape == (40, 10)

    # loader-only keys do not change the key; anything else does, and another extractor gets another file
    assert _key(ex, dataset=DATA_CFG | {"batch_size": 7}).digest() == _key(ex).digest()
    assert _key(ex, split="train").digest() != _key(ex).digest()
    other_weights = TinyExtractor(seed=1)  # same name, other weights
    other_name = TinyExtractor(name="tiny-other")
    assert cache.path(_key(other_weights)) != cache.path(_key(ex))
    assert cache.path(_key(other_name)) != cache.path(_key(ex))
    assert cache.load(_key(other_weights)) is None

    # OmegaConf configs are accepted and give the same key as the equivalent dict
    from omegaconf import OmegaConf

    assert _key(ex, dataset=OmegaConf.create(DATA_CFG)).digest() == _key(ex).digest()

    with pytest.raises(ConfigError, match="ReferenceKey was made for extractor"):
        reference_features(cache, _key(ex), other_name, batches)


def test_tampered_cache_key_is_a_clear_error(tmp_path):
    cache = ReferenceCache(tmp_path)
    ex = TinyExtractor()
    key = _key(ex)
    path = cache.save(key, torch.randn(40, 64))
    payload = torch.load(path, weights_only=True)
    payload["key"] = _key(TinyExtractor(seed=3), split="train").to_json()  # made for something else
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"another key.*extractor_fingerprint.*split.*delete the file"):
        cache.load(key)
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot be read"):
        cache.load(key)
