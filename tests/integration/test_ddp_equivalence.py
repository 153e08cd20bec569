"""Two gloo ranks of 4 samples compute the gradient one process computes on the 8 samples.

For an unconditional, a class-conditional (with CFG dropout) and an inpainting UNet (random masks), and a
class-conditional DiT with learned variance (adaLN class vector, CFG dropout), on a KL first stage (posterior samples): each rank runs the system's step loss on its contiguous half of the
global batch with the step's :class:`~latentgen.randomness.BatchRandomness` for its rank, and the
gradients are averaged over the ranks as DDP does. Every random number of a sample (drop draw, t, eps,
posterior noise, inpainting mask) must then be the one the single process drew for that sample, so the
averaged gradient and the mean loss equal the one-process ones to float rounding.

(The same through Lightning's DDP and the command line, for the unconditional model, is in
tests/e2e/test_resume.py.)
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
from torch.utils.data import default_collate

from latentgen.app.building import build_latent_system
from latentgen.data.shapes import ShapesDataset
from latentgen.randomness import BatchRandomness
from tests.helpers import compose_config
from tests.helpers import make_first_stage_export

# case -> (conditioner, denoiser and objective overrides)
UNET = ["denoiser=unet_tiny"]
CASES = {
    "none": ("none", UNET),
    "class": ("class", UNET),
    "inpaint": ("inpaint", UNET),
    "dit_class": ("class_vector", ["denoiser=dit_tiny", "objective=ddpm_eps_learned_var_linear"]),
}
SEED, STEP, GLOBAL_BATCH, WORLD = 3, 5, 8, 2


FIRST_STAGE = ["data=shapes", "data.resolution=16", "autoencoder=kl_f4_tiny"]


def _system(case: str, first_stage: str):
    conditioner, model = CASES[case]
    drop = ["conditioner.drop_prob=0.5"] if conditioner.startswith("class") else []
    cfg = compose_config([*FIRST_STAGE, f"conditioner={conditioner}", *drop, *model])
    torch.manual_seed(0)
    return build_latent_system(cfg, first_stage).train()


def _batch() -> dict[str, torch.Tensor]:
    ds = ShapesDataset(split="val", resolution=16, num_val=GLOBAL_BATCH)
    return default_collate([ds[i] for i in range(GLOBAL_BATCH)])


def _loss_and_grads(case: str, first_stage: str, rank: int, world: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """This rank's loss and gradients, on rows rank*B .. rank*B + B - 1 of the global batch."""
    system = _system(case, first_stage)
    b = GLOBAL_BATCH // world
    shard = {k: v[rank * b : (rank + 1) * b] for k, v in _batch().items()}  # contiguous sharding
    rng = BatchRandomness.for_step(SEED, STEP, b, rank=rank, world_size=world)
    loss, _ = system.step_loss(system.trainable, shard, rng)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in system.trainable.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _worker(rank: int, world: int, port: int, out_dir: str, first_stage: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        out = {}
        for case in CASES:
            loss, grads = _loss_and_grads(case, first_stage, rank, world)
            for t in (loss, *grads.values()):  # what DDP does: the mean over ranks
                dist.all_reduce(t)
                t /= world
            out[case] = {"loss": loss, "grads": grads}
        if rank == 0:
            torch.save(out, f"{out_dir}/ddp.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_two_ranks_give_the_one_process_gradient_for_random_conditioning(tmp_path):
    import torch.multiprocessing as mp

    first_stage = str(make_first_stage_export(tmp_path / "first_stage", FIRST_STAGE))  # a KL posterior to sample
    mp.start_processes(_worker, args=(WORLD, _free_port(), str(tmp_path), first_stage), nprocs=WORLD, join=True,
                       start_method="fork")  # fmt: skip
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    for case in CASES:
        loss, grads = _loss_and_grads(case, first_stage, 0, 1)
        got = ddp[case]
        assert got["grads"].keys() == grads.keys(), case
        torch.testing.assert_close(got["loss"], loss, rtol=1e-6, atol=1e-7, msg=case)
        scale = max(g.abs().max().item() for g in grads.values())
        worst = max((got["grads"][n] - g).abs().max().item() for n, g in grads.items())
        assert scale > 0 and worst <= 1e-5 * scale, f"{case}: gradients differ by {worst} (scale {scale})"
