"""GenerativeMetrics (batch-wise features, DDP cat-sync) and the reference-feature disk cache."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentgen.errors import CheckpointError, ConfigError, DataError
from latentgen.metrics import (
    GenerativeMetrics,
    ReconstructionMetrics,
    ReferenceCache,
    ReferenceKey,
    density_coverage,
    frechet_distance_from_features,
    inception_score,
    kernel_inception_distance,
    precision_recall,
    reference_features,
)
from latentgen.metrics.extractors.base import FeatureExtractor

ALL = ["fid", "kid", "prc", "density_coverage", "is"]


class TinyExtractor(FeatureExtractor):
    """A fixed random projection of 8x8-pooled pixels: 64-d features, 10 logits. Counts its calls."""

    feature_dim = 64
    has_logits = True
    weights_label = "random projection (test)"

    def __init__(self, seed: int = 0, name: str = "tiny-test") -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = nn.Parameter(torch.randn(3 * 8 * 8, 64, generator=g) / 8, requires_grad=False)
        self.head = nn.Parameter(torch.randn(64, 10, generator=g), requires_grad=False)
        self.name = name
        self.calls = 0

    def forward(self, images):
        self._check_input(images)
        self.calls += 1
        x = F.adaptive_avg_pool2d(images.float() / 255, 8).flatten(1)  # (B, 192)
        f = x @ self.proj  # (B, 64)
        return {"features": f, "logits": f @ self.head}


def _images(n: int, seed: int, bright: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 16, 16, generator=g) * 1.6 - 0.8 + bright).clamp(-1, 1)  # [-1, 1] floats


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


# ----------------------------------------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _features_for_ddp():
    g = torch.Generator().manual_seed(11)
    real = torch.randn(70, 16, generator=g)
    fake = torch.randn(61, 16, generator=g) * 1.1 + 0.1
    logits = torch.randn(61, 5, generator=g)
    rec = torch.rand(9, 3, 16, 16, generator=g) * 2 - 1
    orig = (rec + 0.1 * torch.randn(9, 3, 16, 16, generator=g)).clamp(-1, 1)
    return real, fake, logits, rec, orig


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        real, fake, logits, rec, orig = _features_for_ddp()
        gm = GenerativeMetrics(None, metrics=ALL, kid_subset_size=30, kid_subsets=5, is_splits=3)
        rm = ReconstructionMetrics(lpips=lambda x, y: (x - y).abs().mean(dim=(1, 2, 3)))
        cut_r, cut_f, cut_x = 40, 30, 5  # uneven shards
        sl_r = slice(0, cut_r) if rank == 0 else slice(cut_r, None)
        sl_f = slice(0, cut_f) if rank == 0 else slice(cut_f, None)
        sl_x = slice(0, cut_x) if rank == 0 else slice(cut_x, None)
        gm.update_features(real[sl_r], real=True)
        gm.update_features(fake[sl_f], real=False, logits=logits[sl_f])
        rm.update(rec[sl_x], orig[sl_x])
        rm_plain = ReconstructionMetrics()  # no LPIPS: its empty state must not survive the sync as NaN
        rm_plain.update(rec[sl_x], orig[sl_x])
        res = {"gen": gm.compute(), "rec": rm.compute(), "rec_plain": rm_plain.compute(),
               "gathered_real": gm.gathered_features(real=True).shape[0]}
        torch.save(res, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "start_method",
    [
        pytest.param("fork", marks=pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork")),
        pytest.param("spawn", marks=pytest.mark.slow),  # re-imports torchmetrics in both children: ~15-30 s here
    ],
)
def test_ddp_two_gloo_processes_equal_single_process(tmp_path, start_method):
    import torch.multiprocessing as mp

    mp.start_processes(
        _ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method=start_method
    )
    real, fake, logits, rec, orig = _features_for_ddp()
    gm = GenerativeMetrics(None, metrics=ALL, kid_subset_size=30, kid_subsets=5, is_splits=3)
    gm.update_features(real, real=True)
    gm.update_features(fake, real=False, logits=logits)
    single = gm.compute()
    rm = ReconstructionMetrics(lpips=lambda x, y: (x - y).abs().mean(dim=(1, 2, 3)))
    rm.update(rec, orig)
    single_rec = rm.compute()
    for rank in (0, 1):
        res = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert res["gathered_real"] == 70
        assert res["gen"]["num_real"] == 70 and res["gen"]["num_fake"] == 61
        for k, v in single.items():
            assert res["gen"][k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
        for k, v in single_rec.items():
            assert res["rec"][k] == pytest.approx(v, rel=1e-6), k
        assert set(res["rec_plain"]) == {"psnr_mean", "psnr_std", "ssim_mean", "ssim_std", "num_samples"}
        assert res["rec_plain"]["num_samples"] == 9
        assert res["rec_plain"]["psnr_mean"] == pytest.approx(single_rec["psnr_mean"], rel=1e-6)
