"""The optimizer step of a latent model: torch's AdamW implementations on the denoiser's parameters.

    python benchmarks/optimizer_step.py [--denoiser unet_small unet_mid] [--threads 2] [--steps 50]

AdamW with the per-tensor loop (torch's CPU default), ``foreach=True`` and ``fused=True`` (the config's
choice, conf/model/latent_diffusion.yaml) step the same parameters with the same random gradients,
interleaved round by round in one process; the EMA update of the system is timed beside them, since it
runs after every optimizer step too. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {"loop (CPU default)": {"foreach": False}, "foreach": {"foreach": True}, "fused (config)": {"fused": True}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--denoiser", nargs="+", default=["unet_small", "unet_mid"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per variant and round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/optimizer_step.json"))
    args = p.parse_args()

    import torch
    from hydra.utils import instantiate

    from latentgen.systems.ema import EMA
    from tests.helpers import compose_config

    torch.set_num_threads(args.threads)
    rows = []
    for name in args.denoiser:
        torch.manual_seed(0)
        net = instantiate(compose_config([f"denoiser={name}"]).denoiser)
        params = list(net.parameters())
        for q in params:
            q.grad = torch.randn_like(q)
        opts = {k: torch.optim.AdamW(params, lr=1e-4, **kw) for k, kw in VARIANTS.items()}
        ema = EMA(net, decay=0.999)
        times: dict[str, list[float]] = {k: [] for k in [*opts, "EMA update"]}
        for opt in opts.values():
            opt.step()  # allocate the state
        for _ in range(args.rounds):
            for k, opt in opts.items():
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    opt.step()
                times[k].append((time.perf_counter() - t0) / args.steps)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                ema.update(net)
            times["EMA update"].append((time.perf_counter() - t0) / args.steps)
        ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
        rows.append({"denoiser": name, "tensors": len(params), "parameters": sum(q.numel() for q in params),
                     "ms_per_step": ms, "threads": args.threads})  # fmt: skip

    print(f"{'denoiser':<12} {'params':>8} " + " ".join(f"{k:>20}" for k in rows[0]["ms_per_step"]))
    for r in rows:
        loop = r["ms_per_step"]["loop (CPU default)"]
        cells = [f"{v:8.2f} ms ({loop / v:4.1f}x)" if k in VARIANTS else f"{v:8.2f} ms"
                 for k, v in r["ms_per_step"].items()]  # fmt: skip
        print(f"{r['denoiser']:<12} {r['parameters'] / 1e6:7.1f}M " + " ".join(f"{c:>20}" for c in cells))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
