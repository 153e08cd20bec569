"""GenerativeMetrics and ReconstructionMetrics under DDP: two gloo processes, each with an uneven shard of the
features, compute what one process computes on all of them (the cat-sync of the feature states)."""

from __future__ import annotations

import pytest
import torch

from latentgen.metrics import GenerativeMetrics, ReconstructionMetrics
from tests.helpers import free_port

ALL = ["fid", "kid", "prc", "density_coverage", "is"]


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
        res = {
            "gen": gm.compute(),
            "rec": rm.compute(),
            "rec_plain": rm_plain.compute(),
            "gathered_real": gm.gathered_features(real=True).shape[0],
        }
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
        _ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method=start_method
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
