"""generator_metrics under DDP: two gloo processes share the sampling and agree with one process.

Each rank samples every other condition batch (with that batch's own noise seed) and the features are
gathered, so 2 ranks produce the same samples, hence the same FID / precision / recall / density /
coverage, as 1 process, and each rank does half the sampling.
"""

from __future__ import annotations

import pytest
import torch

from latentgen.metrics.generator_evaluation import generator_metrics
from latentgen.config import instantiate
from tests.helpers import TinyExtractor, compose_config, free_port, random_images

METRICS = ["fid", "prc", "density_coverage"]
NUM_SAMPLES, BATCH = 37, 8  # 5 batches, the last one partial: rank 0 draws 3, rank 1 draws 2


class NoisySystem:
    """A stand-in latent model: its 'samples' are the condition images plus noise from the generator."""

    device = torch.device("cpu")

    class sampler:  # noqa: N801 - mimics system.sampler
        @staticmethod
        def nfe(steps):
            return steps

    def __init__(self) -> None:
        self.batches_sampled = 0

    def sample(self, batch, generator, steps=None, guidance_scale=None):
        self.batches_sampled += 1
        x = batch["image"]  # (B, 1, 16, 16)
        return (0.5 * x + 0.4 * torch.randn(x.shape, generator=generator)).clamp(-1, 1)


def _evaluate(system) -> dict:
    cfg = compose_config(["data=digits", "data.resolution=16"])
    datamodule = instantiate(cfg.data)  # detached: the same order of condition batches on every rank
    results, _ = generator_metrics(
        system, datamodule, TinyExtractor(), metrics=METRICS, num_samples=NUM_SAMPLES, batch_size=BATCH,
        cache_dir=None, dataset_config={"name": "digits", "resolution": 16}, steps=2, seed=3, progress=False,
    )  # fmt: skip
    return results


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        system = NoisySystem()
        results = _evaluate(system)
        torch.save({"results": results, "batches": system.batches_sampled}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_two_gloo_ranks_split_the_sampling_and_equal_one_process(tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    single_system = NoisySystem()
    single = _evaluate(single_system)
    assert single_system.batches_sampled == 5 and single["num_samples"] == NUM_SAMPLES
    drawn = []
    for rank in (0, 1):
        saved = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        drawn.append(saved["batches"])
        res = saved["results"]
        assert res["num_samples"] == NUM_SAMPLES and res["num_fake"] == NUM_SAMPLES
        for key in ("fid", "precision", "recall", "density", "coverage", "num_real"):
            assert res[key] == pytest.approx(single[key], rel=1e-6, abs=1e-9), key
    assert drawn == [3, 2]


# ---------------------------------------------------------------------------------------------- reference features
REF_IMAGES, REF_BATCH, REF_N = 37, 8, 30  # batches of 8, 8, 8, 6 once cut at 30: rank 0 takes 16, rank 1 takes 14


def _reference(cache_dir):
    from latentgen.metrics.reference_cache import ReferenceCache, ReferenceKey, reference_features

    extractor = TinyExtractor()
    images = random_images(REF_IMAGES, seed=5)  # (37, 3, 16, 16)
    key = ReferenceKey.create(dataset={"name": "test"}, split="val", resolution=16, extractor=extractor,
                              num_samples=REF_N)  # fmt: skip

    def batches():
        for i in range(0, REF_IMAGES, REF_BATCH):
            yield {"image": images[i : i + REF_BATCH]}

    ref = reference_features(ReferenceCache(cache_dir), key, extractor, batches)
    return ref, extractor.calls


def _reference_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cache = f"{out_dir}/cache{rank}"  # one cache dir per rank: after the first call only rank 0's has the file
        first, calls_first = _reference(cache)
        second, calls_second = _reference(cache)  # rank 0 would hit, rank 1 misses: both must extract again
        torch.save({"features": first.features, "logits": first.logits, "again": second.features,
                    "from_cache": second.from_cache, "calls": [calls_first, calls_second]},
                   f"{out_dir}/ref{rank}.pt")  # fmt: skip
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_two_gloo_ranks_share_the_reference_extraction_and_gather_it_in_order(tmp_path):
    """On a cache miss each rank extracts every other batch of the real images; the gathered features are
    those of one process, in the same order; rank 0 alone writes the cache; and a cache that only some
    ranks see is not used (else the others would wait in the gather for ever)."""
    import torch.multiprocessing as mp

    mp.start_processes(_reference_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")  # fmt: skip
    single, single_calls = _reference(tmp_path / "single")
    assert single.features.shape == (REF_N, 64) and single_calls == 4
    saved = [torch.load(tmp_path / f"ref{rank}.pt", weights_only=True) for rank in (0, 1)]
    for s in saved:
        torch.testing.assert_close(s["features"], single.features, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(s["logits"], single.logits, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(s["again"], single.features, rtol=1e-6, atol=1e-7)
        assert s["from_cache"] is False
    assert [s["calls"] for s in saved] == [[2, 2], [2, 2]]  # batches 0, 2 and 1, 3: half the extraction each
    assert len(list((tmp_path / "cache0" / "reference_features").glob("*.pt"))) == 1
    assert not (tmp_path / "cache1").exists() or not list((tmp_path / "cache1").rglob("*.pt"))
