"""generator_metrics under DDP: two gloo processes share the sampling and agree with one process.

Each rank samples every other condition batch (with that batch's own noise seed) and the features are
gathered, so 2 ranks produce the same samples, hence the same FID / precision / recall / density /
coverage, as 1 process, and each rank does half the sampling.
"""

from __future__ import annotations

import pytest
import torch

from latentgen.evaluation import generator_metrics
from latentgen.run import instantiate
from tests.helpers import compose_config
from tests.unit.test_metrics_feature_stats import TinyExtractor, _free_port

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

    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
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
