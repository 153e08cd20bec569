"""What the speed options of the config buy: training images/s of the mid-size UNet and of an autoencoder
in fp32, bf16-mixed, channels-last (and both), torch.compile; and the cost of 2-process DDP.

- ``denoiser=unet_mid`` (conf/denoiser/unet_mid.yaml) on 3x32x32 inputs (``autoencoder=identity``, pixel
  space, where the UNet is compute-bound) and on 4x8x8 latents (``autoencoder=kl_f8``, overhead-bound):
  one training step = the objective's loss (ddpm_eps) + backward + AdamW, as ``trainer.precision=bf16-mixed``
  / ``denoiser.channels_last=true`` / ``compile=true`` run it.
- ``autoencoder=kl_f4_tiny`` and ``kl_f4`` (the paper's f=4, ch=128) at 32 px: encoder + decoder + L1 loss
  + backward + Adam (the generator half of the first-stage step; LPIPS and the GAN are separate costs).
- DDP: the same UNet step on 2 gloo processes (half the batch each, 1 thread each) against 1 process
  with the whole batch (1 thread): the global images/s of each, so the ratio is the speed-up from the
  second core minus the all-reduce.

Variants run interleaved in one process with pinned threads (docs/machines.md); the median of the rounds
is reported, in images per second of wall time. torch.compile's cold compile time is reported apart.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/speed_options.py [--quick] [--no-compile] [--no-ddp] \
        [--out benchmarks/results/speed_options.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# Global batch per model (kl_f4, the paper's ch=128 autoencoder, takes ~1 s per image in fp32 here).
BATCH = {"pix3x32": 16, "lat4x8": 32, "kl_f4_tiny": 32, "kl_f4": 8}


def compose(overrides: list[str]):
    from tests.helpers import compose_config

    return compose_config(overrides)


def build_unet(input_kind: str, channels_last: bool):
    """(denoiser, objective, input shape) from the real configs."""
    from latentgen.config import instantiate

    ae = {
        "pix3x32": ["autoencoder=identity", "data=shapes", "data.resolution=32"],
        "lat4x8": ["autoencoder=kl_f8", "data=shapes", "data.resolution=64"],
    }[input_kind]
    cfg = compose(
        [*ae, "denoiser=unet_mid", "objective=ddpm_eps", f"denoiser.channels_last={str(channels_last).lower()}"]
    )
    torch.manual_seed(0)
    denoiser = instantiate(cfg.denoiser)
    objective = instantiate(cfg.objective)
    c = int(cfg.denoiser.in_channels)
    s = int(cfg.denoiser.input_size)
    return denoiser, objective, (c, s, s)


def unet_step_fn(input_kind: str, batch: int, *, bf16: bool, channels_last: bool, compiled: bool):
    from latentgen.conditioning import Conditioning

    net, objective, shape = build_unet(input_kind, channels_last)
    if compiled:
        net.compile(dynamic=False)  # as the latent system does (compile=true)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x0 = torch.randn(batch, *shape)
    gen = torch.Generator().manual_seed(0)
    cond = Conditioning()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            loss, _ = objective.loss(lambda x_t, t: net(x_t, t, cond), x0, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def ae_step_fn(name: str, batch: int, *, bf16: bool, channels_last: bool):
    from latentgen.config import instantiate

    cfg = compose([f"autoencoder={name}", "data=shapes", "data.resolution=32"])
    torch.manual_seed(0)
    ae = instantiate(cfg.autoencoder)
    if channels_last:
        ae = ae.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(ae.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, 32, 32) * 2 - 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            out = ae(x)
        loss = F.l1_loss(out.recon.float(), x) + 1e-6 * out.reg_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def interleaved(steps: dict, batch: int, rounds: int, iters: int, warmup: int) -> dict[str, float]:
    """Median images/s (wall) per variant, variants interleaved round by round."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            times[name].append((time.perf_counter() - t0) / iters)
    return {k: batch / statistics.median(v) for k, v in times.items()}


# ---------------------------------------------------------------------------------------------- DDP
def _ddp_worker(rank: int, world: int, input_kind: str, batch: int, iters: int, rounds: int, port: int, q) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from latentgen.conditioning import Conditioning

    net, objective, shape = build_unet(input_kind, channels_last=False)
    model = DDP(net)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x0 = torch.randn(batch // world, *shape)
    gen = torch.Generator().manual_seed(rank)
    cond = Conditioning()

    def step() -> None:
        loss, _ = objective.loss(lambda x_t, t: model(x_t, t, cond), x0, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    times = []
    for _ in range(rounds):
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        dist.barrier()
        times.append((time.perf_counter() - t0) / iters)
    if rank == 0:
        q.put(batch / statistics.median(times))
    dist.destroy_process_group()


def ddp_images_per_s(input_kind: str, batch: int, iters: int, rounds: int, world: int) -> float:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    port = 29500 + (os.getpid() % 1000)
    mp.start_processes(
        _ddp_worker,
        args=(world, input_kind, batch, iters, rounds, port, q),
        nprocs=world,
        start_method="spawn",
        join=True,
    )
    return float(q.get())


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer rounds (a smoke test, noisy figures)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--no-ddp", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speed_options.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rounds, iters, warmup = (2, 1, 1) if args.quick else (5, 2, 1)
    rows: list[dict] = []

    variants = {
        "fp32": dict(bf16=False, channels_last=False),
        "bf16-mixed": dict(bf16=True, channels_last=False),
        "channels-last": dict(bf16=False, channels_last=True),
        "bf16-mixed + channels-last": dict(bf16=True, channels_last=True),
    }
    for kind in ("pix3x32", "lat4x8"):
        b = BATCH[kind]
        steps = {name: unet_step_fn(kind, b, compiled=False, **kw) for name, kw in variants.items()}
        compile_s = None
        if not args.no_compile:
            fn = unet_step_fn(kind, b, compiled=True, bf16=False, channels_last=False)
            t0 = time.perf_counter()
            try:
                fn()  # the cold compile happens in the first step
                compile_s = time.perf_counter() - t0
                steps["compile (fp32)"] = fn
            except Exception as e:  # noqa: BLE001 - reported, the other variants still run
                print(f"torch.compile failed for unet_mid {kind}: {type(e).__name__}: {str(e)[:200]}")
        res = interleaved(steps, b, rounds, iters, warmup)
        for name, ips in res.items():
            rows.append(
                {
                    "model": f"unet_mid {kind}",
                    "batch": b,
                    "variant": name,
                    "images_per_s": ips,
                    "speedup": ips / res["fp32"],
                    **({"cold_compile_s": compile_s} if name.startswith("compile") else {}),
                }
            )
    for ae in ("kl_f4_tiny", "kl_f4"):
        b = BATCH[ae]
        steps = {name: ae_step_fn(ae, b, **kw) for name, kw in variants.items()}
        res = interleaved(steps, b, rounds, iters, warmup)
        for name, ips in res.items():
            rows.append(
                {
                    "model": f"autoencoder {ae} 3x32x32",
                    "batch": b,
                    "variant": name,
                    "images_per_s": ips,
                    "speedup": ips / res["fp32"],
                }
            )
    if not args.no_ddp:
        for kind in ("lat4x8", "pix3x32"):
            b = BATCH[kind]
            one = ddp_images_per_s(kind, b, iters, rounds, world=1)
            two = ddp_images_per_s(kind, b, iters, rounds, world=2)
            rows.append(
                {
                    "model": f"unet_mid {kind}",
                    "batch": b,
                    "variant": "DDP 1 process (gloo)",
                    "images_per_s": one,
                    "speedup": 1.0,
                }
            )
            rows.append(
                {
                    "model": f"unet_mid {kind}",
                    "batch": b,
                    "variant": "DDP 2 processes (gloo)",
                    "images_per_s": two,
                    "speedup": two / one,
                }
            )

    print(f"\n{'model':<34} {'batch':>5} {'variant':<28} {'img/s':>8} {'x base':>7}")
    for r in rows:
        extra = f"  (cold compile {r['cold_compile_s']:.0f} s)" if r.get("cold_compile_s") else ""
        print(
            f"{r['model']:<34} {r['batch']:>5} {r['variant']:<28} {r['images_per_s']:>8.1f} {r['speedup']:>7.2f}{extra}"
        )
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "torch": torch.__version__,
        "load_average_at_start": os.getloadavg(),
        "quick": args.quick,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
