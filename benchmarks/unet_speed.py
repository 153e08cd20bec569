"""Speed of latentgen's UNet against diffusers' UNet2DModel / UNet2DConditionModel at matched architecture.

For each size (tiny, mid) and input (3x32x32 pixels, 4x8x8 latents) it builds

- ``uncond``: our UNet (self-attention transformer blocks) vs ``UNet2DModel`` (GroupNorm+attention blocks)
  with the same channels, blocks, attention levels, head width (32) and scale-shift ResBlocks;
- ``xattn``: our UNet with cross-attention (``context_dim``) vs ``UNet2DConditionModel`` (Transformer2DModel
  blocks: self-attn, cross-attn, GEGLU feed-forward) -- the same layer graph, so FLOPs match;
- ``plain``: our UNet with ``attention_type="plain"`` vs the ``UNet2DModel`` it exports to
  (``latentgen.interop.diffusers_unet.unet_to_diffusers``): the identical graph with the same weights;

and measures the training step (AdamW, MSE), the sampling forward pass and (mode ``ddim50``) a whole DDIM-50
sampling loop (latentgen's DDIMSampler vs diffusers' DDIMScheduler loop) in images per second of process CPU
time (and of wall time), in fp32 and bf16 autocast, with NCHW and channels-last. Ours and diffusers run interleaved, iteration by iteration, in the
same process with pinned threads; the median is reported. FLOPs come from ``torch.utils.flop_counter``
(matmuls, convolutions, attention; elementwise ops are not counted).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/unet_speed.py [--quick] [--threads 1] \
        [--out benchmarks/results/unet_speed.json]
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
from torch.utils.flop_counter import FlopCounterMode

from interleaved_timing import interleave, machine  # benchmarks/interleaved_timing.py (scripts run from here)
from latentgen.conditioning import Conditioning
from latentgen.networks import UNet

HEAD_CHANNELS = 32
CONTEXT_DIM, CONTEXT_TOKENS = 384, 16  # MiniLM-sized text tokens

# name -> (ch, ch_mult, num_res_blocks, attention levels (indices; mid block always has attention))
SIZES = {
    "tiny": (32, (1, 1), 1, ()),  # conf/denoiser/unet_tiny.yaml
    "mid": (64, (1, 2, 2), 2, (1,)),  # diffusers UNet2DModel (64,128,128), attention at the 2nd level
}
INPUTS = {"pix3x32": (3, 32), "lat4x8": (4, 8)}


def build_ours(size: str, in_ch: int, res: int, xattn: bool, channels_last: bool, plain: bool = False) -> UNet:
    ch, mult, nrb, attn_levels = SIZES[size]
    return UNet(
        in_channels=in_ch,
        out_channels=in_ch,
        ch=ch,
        ch_mult=mult,
        num_res_blocks=nrb,
        input_size=res,
        attention_resolutions=[res // 2**i for i in attn_levels],
        head_channels=HEAD_CHANNELS,
        context_dim=CONTEXT_DIM if xattn else None,
        channels_last=channels_last,
        attention_type="plain" if plain else "transformer",
    )


def build_exported(ours: UNet, channels_last: bool) -> torch.nn.Module:
    """The diffusers UNet2DModel that ``ours`` (plain attention) exports to: the same graph and weights."""
    from latentgen.interop.diffusers_unet import unet_to_diffusers

    model = unet_to_diffusers(ours, time_shift=1).train()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def build_diffusers(size: str, in_ch: int, res: int, xattn: bool, channels_last: bool) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel, UNet2DModel

    ch, mult, nrb, attn_levels = SIZES[size]
    chans = tuple(ch * m for m in mult)
    n = len(mult)
    if xattn:
        down = tuple("CrossAttnDownBlock2D" if i in attn_levels else "DownBlock2D" for i in range(n))
        up = tuple("CrossAttnUpBlock2D" if i in attn_levels else "UpBlock2D" for i in reversed(range(n)))
        model = UNet2DConditionModel(
            sample_size=res,
            in_channels=in_ch,
            out_channels=in_ch,
            down_block_types=down,
            up_block_types=up,
            block_out_channels=chans,
            layers_per_block=nrb,
            cross_attention_dim=CONTEXT_DIM,
            attention_head_dim=tuple(c // HEAD_CHANNELS for c in chans),  # legacy name: number of heads
            resnet_time_scale_shift="scale_shift",
            norm_num_groups=32,
        )
    else:
        down = tuple("AttnDownBlock2D" if i in attn_levels else "DownBlock2D" for i in range(n))
        up = tuple("AttnUpBlock2D" if i in attn_levels else "UpBlock2D" for i in reversed(range(n)))
        model = UNet2DModel(
            sample_size=res,
            in_channels=in_ch,
            out_channels=in_ch,
            down_block_types=down,
            up_block_types=up,
            block_out_channels=chans,
            layers_per_block=nrb,
            attention_head_dim=HEAD_CHANNELS,
            resnet_time_scale_shift="scale_shift",
            norm_num_groups=32,
        )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


class Runner:
    """One model + optimizer + fixed inputs; ``train_step()`` and ``sample_step()`` run one iteration."""

    def __init__(self, impl: str, model: torch.nn.Module, x, t, ctx, channels_last: bool, fused_adamw: bool = False):
        self.impl, self.model = impl, model
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused_adamw or None)
        self.x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        self.t, self.ctx = t, ctx
        self.target = torch.randn_like(x)

    def forward(self) -> torch.Tensor:
        if self.impl == "ours":
            cond = None if self.ctx is None else Conditioning(context=self.ctx)
            return self.model(self.x, self.t, cond)
        kw = {} if self.ctx is None else {"encoder_hidden_states": self.ctx}
        return self.model(self.x, self.t * 1000, return_dict=False, **kw)[0]

    def train_step(self) -> None:
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        loss = (self.forward().float() - self.target).square().mean()
        loss.backward()
        self.opt.step()

    @torch.inference_mode()
    def sample_step(self) -> None:
        self.model.eval()
        self.forward()

    @torch.inference_mode()
    def ddim50(self) -> None:
        """A whole DDIM-50 loop from ``x``: latentgen's sampler, or diffusers' DDIMScheduler loop."""
        self.model.eval()
        if self.impl == "ours":
            from latentgen.generative.parameterization import Parameterization
            from latentgen.generative.predictions import EpsPrediction
            from latentgen.generative.samplers import DDIMSampler
            from latentgen.generative.schedules import ScaledLinearSchedule

            param = Parameterization(ScaledLinearSchedule(), EpsPrediction())
            DDIMSampler(steps=50)(lambda x, t: self.model(x, t), param, self.x)
            return
        from diffusers import DDIMScheduler

        sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195,
                              timestep_spacing="trailing", clip_sample=False)  # fmt: skip
        sched.set_timesteps(50)
        x = self.x
        for t in sched.timesteps:
            x = sched.step(self.model(x, t, return_dict=False)[0], t, x).prev_sample


def count_flops(runner: Runner, backward: bool) -> int:
    with FlopCounterMode(display=False) as counter:
        if backward:
            runner.opt.zero_grad(set_to_none=True)
            runner.forward().float().square().mean().backward()
        else:
            with torch.no_grad():
                runner.forward()
    return counter.get_total_flops()


# the Runner method each mode times
STEPS = {"train": "train_step", "sample": "sample_step", "ddim50": "ddim50"}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer iterations, fp32 NCHW + bf16 only")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--inputs", nargs="+", default=list(INPUTS), choices=list(INPUTS))
    p.add_argument("--variants", nargs="+", default=["uncond", "xattn"], choices=["uncond", "xattn", "plain"])
    p.add_argument("--modes", nargs="+", default=["train", "sample"], choices=["train", "sample", "ddim50"])
    p.add_argument("--batch-latent", type=int, default=32)
    p.add_argument("--batch-pixel", type=int, default=8)
    p.add_argument("--fused-adamw", action="store_true", help="AdamW(fused=True) (default: the for-loop CPU AdamW)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/unet_speed.json"))
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warmup, iters = (1, 3) if args.quick else (1, 4)
    settings = (
        [(False, False), (True, False)] if args.quick else [(False, False), (False, True), (True, False), (True, True)]
    )
    info = {**machine(), "fused_adamw": args.fused_adamw, "quick": args.quick}
    print(f"# {info}", flush=True)
    results = []
    t_start = time.perf_counter()
    for size in args.sizes:
        for inp in args.inputs:
            in_ch, res = INPUTS[inp]
            batch = args.batch_pixel if res >= 32 else args.batch_latent
            for variant in args.variants:
                xattn = variant == "xattn"
                g = torch.Generator().manual_seed(0)
                x = torch.randn(batch, in_ch, res, res, generator=g)
                t = torch.rand(batch, generator=g)
                ctx = torch.randn(batch, CONTEXT_TOKENS, CONTEXT_DIM, generator=g) if xattn else None
                flops = {}
                for bf16, cl in settings:
                    torch.manual_seed(0)
                    ours = build_ours(size, in_ch, res, xattn, cl, plain=variant == "plain")
                    theirs = (
                        build_exported(ours, cl) if variant == "plain" else build_diffusers(size, in_ch, res, xattn, cl)
                    )
                    runners = [
                        Runner("ours", ours, x, t, ctx, cl, args.fused_adamw),
                        Runner("diffusers", theirs, x, t, ctx, cl, args.fused_adamw),
                    ]
                    if not flops:
                        for r in runners:
                            one = Runner(r.impl, r.model, x[:1], t[:1], None if ctx is None else ctx[:1], False)
                            flops[r.impl] = {
                                "params": sum(q.numel() for q in r.model.parameters()),
                                "fwd_flops": count_flops(one, backward=False),
                                "train_flops": count_flops(one, backward=True),
                            }
                    for mode in args.modes:
                        sec = interleave(runners, lambda r, step=STEPS[mode]: getattr(r, step), bf16, warmup, iters)
                        rec = {
                            "size": size,
                            "input": inp,
                            "variant": variant,
                            "mode": mode,
                            "dtype": "bf16" if bf16 else "fp32",
                            "channels_last": cl,
                            "batch": batch,
                        }
                        for impl, (wall, cpu) in sec.items():
                            f = flops[impl]["train_flops" if mode == "train" else "fwd_flops"] * (
                                50 if mode == "ddim50" else 1
                            )
                            rec[impl] = {
                                **flops[impl],
                                "sec_per_iter": wall,
                                "cpu_sec_per_iter": cpu,
                                "img_per_s": batch / wall,
                                "img_per_cpu_s": batch / cpu,
                                "gflop_per_cpu_s": f * batch / cpu / 1e9,
                            }
                        rec["speed_ratio"] = rec["ours"]["img_per_cpu_s"] / rec["diffusers"]["img_per_cpu_s"]
                        rec["wall_speed_ratio"] = rec["ours"]["img_per_s"] / rec["diffusers"]["img_per_s"]
                        rec["flop_ratio"] = (
                            rec["ours"]["train_flops" if mode == "train" else "fwd_flops"]
                            / rec["diffusers"]["train_flops" if mode == "train" else "fwd_flops"]
                        )
                        results.append(rec)
                        print(fmt_row(rec), flush=True)
    elapsed = time.perf_counter() - t_start
    print_table(results)
    print(f"# total {elapsed:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": info, "elapsed_s": elapsed, "results": results}, indent=1))
    print(f"# wrote {args.out}")


HEADER = (
    f"{'size':5} {'input':8} {'variant':7} {'mode':6} {'dtype':5} {'CL':2} | "
    f"{'ours img/s':>10} {'diff img/s':>10} {'speed':>6} {'wall':>5} | {'ours GF/s':>9} {'diff GF/s':>9} | "
    f"{'GF/img ours':>11} {'diff':>6} {'flops':>6} | {'params ours':>11} {'diff':>7}"
)


def fmt_row(r: dict) -> str:
    o, d = r["ours"], r["diffusers"]
    key = "train_flops" if r["mode"] == "train" else "fwd_flops"
    return (
        f"{r['size']:5} {r['input']:8} {r['variant']:7} {r['mode']:6} {r['dtype']:5} {'y' if r['channels_last'] else 'n':2} | "
        f"{o['img_per_cpu_s']:10.1f} {d['img_per_cpu_s']:10.1f} {r['speed_ratio']:6.2f} {r['wall_speed_ratio']:5.2f} | "
        f"{o['gflop_per_cpu_s']:9.1f} {d['gflop_per_cpu_s']:9.1f} | "
        f"{o[key] / 1e9:11.3f} {d[key] / 1e9:6.3f} {r['flop_ratio']:6.2f} | "
        f"{o['params'] / 1e6:10.2f}M {d['params'] / 1e6:6.2f}M"
    )


def print_table(results: list[dict]) -> None:
    print("\n" + HEADER)
    print("-" * len(HEADER))
    for r in results:
        print(fmt_row(r))
    ratios = [r["speed_ratio"] for r in results]
    gm = statistics.geometric_mean(ratios) if ratios else float("nan")
    print("# img/s and GF/s per second of process CPU time; 'speed' = ours/diffusers on CPU time, 'wall' on wall time")
    print(f"# speed ratio ours/diffusers: geometric mean {gm:.2f}, min {min(ratios):.2f}, max {max(ratios):.2f}")


if __name__ == "__main__":
    sys.exit(main())
