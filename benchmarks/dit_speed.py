"""Speed of latentgen's DiT against diffusers' DiTTransformer2DModel with the same weights.

For each size a class-conditional ``DiTTransformer2DModel`` (learned variance: out = 2 x in channels) is made
with random weights and imported into latentgen (``latentgen.interop.diffusers_dit.dit_from_diffusers``), so
both compute the same function (the parity test checks it to 1e-5); latentgen's class table is an
``nn.Embedding`` as in the class conditioner. It measures the training step (AdamW, MSE on the first
half of the output) and the sampling forward pass, in images per second of process CPU time (and of wall
time), fp32 and bf16 autocast. Ours and diffusers run interleaved, iteration by iteration, in one process
with pinned threads; the median is reported. FLOPs from ``torch.utils.flop_counter`` (matmuls, convolutions,
SDPA; a multiply-add counts 2).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dit_speed.py [--quick] [--sizes tiny small s2] \
        [--out benchmarks/results/dit_speed.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from interleaved_timing import interleave, machine  # benchmarks/interleaved_timing.py (scripts run from here)
from latentgen.conditioning import Conditioning
from latentgen.interop.diffusers_dit import dit_from_diffusers

NUM_CLASSES = 10
# name -> (heads, head_dim, depth, latent channels, latent size, patch, batch)
SIZES = {
    "tiny": (4, 16, 4, 3, 8, 2, 32),  # conf/denoiser/dit_tiny.yaml on the tiny KL-f4 latents (16 tokens)
    "small": (5, 32, 5, 3, 8, 2, 32),  # conf/denoiser/dit_small.yaml, experiment=dit_digits (16 tokens)
    "s2": (6, 64, 12, 4, 32, 2, 4),  # DiT-S/2 at 256 px (256 tokens)
}


class OursClassDiT(nn.Module):
    """latentgen's DiT with the class conditioner's table (the vector is the class embedding)."""

    def __init__(self, dit: nn.Module, table: torch.Tensor) -> None:
        super().__init__()
        self.dit = dit
        self.table = nn.Embedding.from_pretrained(table.clone(), freeze=False)

    def forward(self, x: torch.Tensor, k: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.dit(x, k.float() / 1000, Conditioning(vector=self.table(y)))


def build(size: str) -> tuple[nn.Module, nn.Module]:
    from diffusers import DiTTransformer2DModel

    heads, head_dim, depth, ch, res, patch, _ = SIZES[size]
    torch.manual_seed(0)
    ref = DiTTransformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=ch,
        out_channels=2 * ch,
        num_layers=depth,
        sample_size=res,
        patch_size=patch,
        num_embeds_ada_norm=NUM_CLASSES,
    )
    with torch.no_grad():  # random weights everywhere (adaLN-Zero would skip nothing, but keep it honest)
        for p in ref.parameters():
            p.normal_(0, 0.02)
        first = ref.transformer_blocks[0].norm1.emb.state_dict()
        for block in ref.transformer_blocks[1:]:
            block.norm1.emb.load_state_dict(first)
    dit, table = dit_from_diffusers(ref)
    return OursClassDiT(dit, table), ref


class Runner:
    def __init__(self, impl: str, model: nn.Module, x, k, y) -> None:
        self.impl, self.model, self.x, self.k, self.y = impl, model, x, k, y
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.target = torch.randn_like(x)

    def forward(self) -> torch.Tensor:
        if self.impl == "ours":
            return self.model(self.x, self.k, self.y)
        return self.model(self.x, timestep=self.k, class_labels=self.y, return_dict=False)[0]

    def train_step(self) -> None:
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        out = self.forward().float()[:, : self.x.shape[1]]
        (out - self.target).square().mean().backward()
        self.opt.step()

    @torch.inference_mode()
    def sample_step(self) -> None:
        self.model.eval()
        self.forward()


def count_flops(runner: Runner, backward: bool) -> int:
    with FlopCounterMode(display=False) as counter:
        if backward:
            runner.opt.zero_grad(set_to_none=True)
            runner.forward().float().square().mean().backward()
        else:
            with torch.no_grad():
                runner.forward()
    return counter.get_total_flops()


HEADER = (
    f"{'size':5} {'mode':6} {'dtype':5} {'batch':5} | {'ours img/s':>10} {'diff img/s':>10} {'speed':>6} {'wall':>5} | "
    f"{'GF/img ours':>11} {'diff':>7} | {'params ours':>11} {'diff':>8}"
)


def fmt_row(r: dict) -> str:
    o, d = r["ours"], r["diffusers"]
    key = "train_flops" if r["mode"] == "train" else "fwd_flops"
    return (
        f"{r['size']:5} {r['mode']:6} {r['dtype']:5} {r['batch']:5} | {o['img_per_cpu_s']:10.1f} "
        f"{d['img_per_cpu_s']:10.1f} {r['speed_ratio']:6.2f} {r['wall_speed_ratio']:5.2f} | "
        f"{o[key] / 1e9:11.3f} {d[key] / 1e9:7.3f} | {o['params'] / 1e6:10.2f}M {d['params'] / 1e6:7.2f}M"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer iterations")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/dit_speed.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warmup, iters = (1, 3) if args.quick else (2, 6)
    info = {**machine(), "quick": args.quick}
    print(f"# {info}", flush=True)
    results = []
    t_start = time.perf_counter()
    for size in args.sizes:
        _, _, _, ch, res, _, batch = SIZES[size]
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, ch, res, res, generator=g)
        k = torch.randint(0, 1000, (batch,), generator=g)
        y = torch.randint(0, NUM_CLASSES + 1, (batch,), generator=g)
        ours, ref = build(size)
        runners = [Runner("ours", ours, x, k, y), Runner("diffusers", ref, x, k, y)]
        flops = {}
        for r in runners:
            one = Runner(r.impl, r.model, x[:1], k[:1], y[:1])
            flops[r.impl] = {
                "params": sum(q.numel() for q in r.model.parameters()),
                "fwd_flops": count_flops(one, backward=False),
                "train_flops": count_flops(one, backward=True),
            }
        for bf16 in (False, True):
            for mode in ("train", "sample"):
                sec = interleave(
                    runners,
                    lambda r, mode=mode: r.train_step if mode == "train" else r.sample_step,
                    bf16,
                    warmup,
                    iters,
                )
                rec = {"size": size, "mode": mode, "dtype": "bf16" if bf16 else "fp32", "batch": batch}
                for impl, (wall, cpu) in sec.items():
                    rec[impl] = {
                        **flops[impl],
                        "sec_per_iter": wall,
                        "cpu_sec_per_iter": cpu,
                        "img_per_s": batch / wall,
                        "img_per_cpu_s": batch / cpu,
                    }
                rec["speed_ratio"] = rec["ours"]["img_per_cpu_s"] / rec["diffusers"]["img_per_cpu_s"]
                rec["wall_speed_ratio"] = rec["ours"]["img_per_s"] / rec["diffusers"]["img_per_s"]
                results.append(rec)
                print(fmt_row(rec), flush=True)
    elapsed = time.perf_counter() - t_start
    print("\n" + HEADER + "\n" + "-" * len(HEADER))
    for r in results:
        print(fmt_row(r))
    ratios = [r["speed_ratio"] for r in results]
    print("# img/s per second of process CPU time; 'speed' = ours/diffusers on CPU time, 'wall' on wall time")
    print(f"# speed ratio ours/diffusers: geometric mean {statistics.geometric_mean(ratios):.2f}, "
          f"min {min(ratios):.2f}, max {max(ratios):.2f}; total {elapsed:.0f} s")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": info, "elapsed_s": elapsed, "results": results}, indent=1))
    print(f"# wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
