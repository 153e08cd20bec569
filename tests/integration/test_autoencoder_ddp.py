"""Autoencoder statistics kept in step across ranks: two gloo processes (forked, so that the children inherit
the imported torch instead of re-importing it: ~1 s vs ~8 s here)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from latentgen.autoencoders import (
    measure_latent_stats,
)
from tests.helpers import free_port, identity_autoencoder, image_batches, vq_with_codebook


# ---------------------------------------------------------------------------------------------- latent statistics
def _latent_stats_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        scale, shift = measure_latent_stats(
            identity_autoencoder(), image_batches(10 + rank, loc=4.0 * rank), 3, center=True
        )
        torch.save(torch.tensor([scale, shift], dtype=torch.float64), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_all_reduce_over_two_gloo_ranks(tmp_path):
    """Two ranks with different data (means 0 and 4) get the same, global scale and shift."""
    # fork (not spawn): the children inherit the imported torch instead of re-importing it (~1 s vs ~8 s here)
    mp.start_processes(
        _latent_stats_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    data = torch.cat([b["image"] for r in range(2) for b in image_batches(10 + r, loc=4.0 * r)]).double()
    torch.testing.assert_close(r0, r1, rtol=0, atol=0)
    torch.testing.assert_close(r0, torch.stack([1.0 / data.std(), data.mean()]), rtol=1e-10, atol=1e-12)
    local = measure_latent_stats(identity_autoencoder(), image_batches(10, loc=0.0), 3)[0]
    assert abs(local - r0[0].item()) > 0.1  # the all-reduce mattered


# ---------------------------------------------------------------------------------------------- VQ codebook
def _vq_ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same initial codebook on both ranks
        codes = torch.cat([torch.zeros(1, 2), torch.full((7, 2), 100.0)])
        vq = vq_with_codebook(codes, ema=True, dead_code_restart=True, usage_decay=0.1).train()
        torch.manual_seed(100 + rank)  # different data and different random picks per rank
        for _ in range(3):
            vq(torch.randn(1, 2, 4, 4) + 3.0 * rank)
        torch.save({k: v.clone() for k, v in vq.state_dict().items()}, os.path.join(out_dir, f"vq{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_vq_ema_and_restart_stay_identical_across_two_gloo_ranks(tmp_path):
    mp.start_processes(_vq_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    s0, s1 = (torch.load(tmp_path / f"vq{r}.pt", weights_only=True) for r in range(2))
    for key in s0:
        assert torch.equal(s0[key], s1[key]), key
    assert (s0["codebook"] < 50).all(dim=1).sum() > 1  # codes were revived (moved next to the data)
