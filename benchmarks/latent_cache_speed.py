"""Latent caching speed-up: one latent-model training step with on-the-fly encoding vs from the cache.

    python benchmarks/latent_cache_speed.py [--autoencoder kl_f4_tiny] [--data shapes] [--steps 20]

Both variants run the same denoiser step (forward, backward, AdamW) on the same batches, interleaved
in one process with a pinned thread count; the difference is the first-stage encoder pass (and the
dataset's image decoding/rendering). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--autoencoder", default="kl_f4_tiny")
    p.add_argument("--denoiser", default="unet_small")
    p.add_argument("--data", default="shapes")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/latent_cache_speed.json"))
    args = p.parse_args()

    import tempfile

    import torch
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader

    from latentgen.data.latent_cache import CachedLatentDataset, load_or_build_latent_cache
    from latentgen.app.building import build_latent_system
    from latentgen.conditioning.base import batch_size_of
    from latentgen.randomness import BatchRandomness
    from tests.helpers import compose_config

    torch.set_num_threads(args.threads)
    cfg = compose_config(
        [
            f"autoencoder={args.autoencoder}",
            f"denoiser={args.denoiser}",
            f"data={args.data}",
            f"data.resolution={args.resolution}",
            f"data.batch_size={args.batch_size}",
        ]
    )
    # An untrained first stage costs the same to run as a trained one.
    system = build_latent_system(cfg, None, check_config=False)
    system.train()
    dm = instantiate(cfg.data)
    dm.setup("fit")
    base = dm.dataset("train")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        cache, _ = load_or_build_latent_cache(system.first_stage, base, tmp, {"bench": True}, progress=False)
        build_s = time.time() - t0
    cached = CachedLatentDataset(cache, base)
    image_loader = iter(dm.train_dataloader())
    latent_loader = iter(DataLoader(cached, batch_size=args.batch_size, shuffle=True, drop_last=True))
    opt = torch.optim.AdamW(system.trainable.parameters(), lr=1e-4)

    def step(batch):
        loss, _ = system.step_loss(system.trainable, batch, BatchRandomness.local(batch_size_of(batch)))
        opt.zero_grad()
        loss.backward()
        opt.step()

    times = {"images": [], "cached": []}
    for i in range(args.steps + 2):  # 2 warm-up steps each, then interleaved
        for name, it in (("images", image_loader), ("cached", latent_loader)):
            t = time.perf_counter()
            step(next(it))
            if i >= 2:
                times[name].append(time.perf_counter() - t)
    rows = {k: sum(v) / len(v) for k, v in times.items()}
    result = {
        "autoencoder": args.autoencoder,
        "denoiser": args.denoiser,
        "data": args.data,
        "resolution": args.resolution,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "cache_build_s": build_s,
        "num_cached": len(cached),
        "step_s_images": rows["images"],
        "step_s_cached": rows["cached"],
        "speedup": rows["images"] / rows["cached"],
    }
    print(f"{'variant':<10} {'s/step':>8} {'img/s':>8}")
    for name in ("images", "cached"):
        print(f"{name:<10} {rows[name]:8.3f} {args.batch_size / rows[name]:8.1f}")
    print(f"speed-up {result['speedup']:.2f}x; building the cache of {len(cached)} samples took {build_s:.1f} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
