"""Latent cache: same latents as on-the-fly encoding, flips handled, stale caches refused."""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from torch.utils.data import default_collate

from latentgen.checkpoint import atomic_torch_save, load_checkpoint_file
from latentgen.data import DigitsDataset, PatchesDataset
from latentgen.data.latent_cache import CachedLatentDataset, load_or_build_latent_cache
from latentgen.errors import DataError
from tests.helpers import compose_config


def _first_stage(resolution: int = 16, channels: int = 1):
    cfg = compose_config(["autoencoder=kl_f4_tiny", f"data.resolution={resolution}", f"data.channels={channels}"])
    ae = instantiate(cfg.autoencoder).eval()
    ae.set_latent_stats(0.7, 0.1)
    return ae


def test_cached_latents_equal_on_the_fly_encoding(tmp_path):
    ae = _first_stage()
    ds = DigitsDataset(resolution=16, channels=1, split="train")
    cache, path = load_or_build_latent_cache(
        ae, ds, tmp_path, {"name": "digits", "resolution": 16}, batch_size=50, progress=False
    )
    cached = CachedLatentDataset(cache, ds)
    assert len(cached) == len(ds) and path.is_file()
    idx = [0, 5, 17, 100]
    batch = default_collate([cached[(i, 0)] for i in idx])
    images = torch.stack([ds[i]["image"] for i in idx])
    assert torch.equal(batch["label"], torch.stack([ds[i]["label"] for i in idx]))
    with torch.no_grad():
        expected = ae.encode_scaled(images)  # posterior mean, scaled
        got = ae.scale_latent(ae.regularizer.latent(batch["latent_raw"]))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_second_call_loads_the_cache_and_another_first_stage_gets_another_file(tmp_path):
    ae = _first_stage()
    ds = DigitsDataset(resolution=16, channels=1, split="train")
    key = {"name": "digits"}
    _, p1 = load_or_build_latent_cache(ae, ds, tmp_path, key, progress=False)
    mtime = p1.stat().st_mtime_ns
    _, p2 = load_or_build_latent_cache(ae, ds, tmp_path, key, progress=False)
    assert p1 == p2 and p2.stat().st_mtime_ns == mtime  # loaded, not rebuilt
    other = _first_stage()  # different random weights
    _, p3 = load_or_build_latent_cache(other, ds, tmp_path, key, progress=False)
    assert p3 != p1
    ae.set_latent_stats(0.5, 0.0)  # a re-measured scale is another first stage too
    _, p4 = load_or_build_latent_cache(ae, ds, tmp_path, key, progress=False)
    assert p4 != p1


def test_a_cache_whose_stored_key_disagrees_is_refused(tmp_path):
    ae = _first_stage()
    ds = DigitsDataset(resolution=16, channels=1, split="train")
    _, path = load_or_build_latent_cache(ae, ds, tmp_path, {"name": "digits"}, progress=False)
    cache = load_checkpoint_file(path)
    cache["key"] = cache["key"].replace("digits", "shapes")
    atomic_torch_save(cache, path)
    try:
        load_or_build_latent_cache(ae, ds, tmp_path, {"name": "digits"}, progress=False)
    except DataError as e:
        assert str(path) in str(e)
    else:  # pragma: no cover - the assertion is the point of the test
        raise AssertionError("a stale cache was used")


def test_flipping_datasets_cache_both_orientations(tmp_path):
    ae = _first_stage(channels=3)
    ds = PatchesDataset(resolution=16, channels=3, split="train", num_train=20, flip=True)
    cache, _ = load_or_build_latent_cache(ae, ds, tmp_path, {"name": "patches"}, progress=False)
    assert cache["raw_flipped"].shape == cache["raw"].shape
    cached = CachedLatentDataset(cache, ds)
    picks = {bool(torch.equal(cached[(0, e)]["latent_raw"], cache["raw_flipped"][0])) for e in range(16)}
    assert picks == {True, False}  # both orientations are used across epochs
    assert torch.equal(cached[(3, 2)]["latent_raw"], cached[(3, 2)]["latent_raw"])  # deterministic per (index, epoch)
