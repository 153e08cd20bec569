"""Train the tiny KL-f4 and VQ-f4 autoencoders on `patches` and `shapes` for a fixed number of steps
and report reconstruction quality (PSNR, SSIM, LPIPS if available) and training images/s.

    python benchmarks/autoencoder_quality.py --steps 1500 --out benchmarks/results/autoencoder_quality.json

Runs the real training path (latentgen.app.training.train on the composed configs), one job after another,
with one thread (pin it with --threads). The reconstruction grids are written to each run's
images/final.png — look at them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def st_lpips_of_reconstructions(ckpt: Path, batches: int) -> float | None:
    """Mean ST-LPIPS (alex) of the val reconstructions of an autoencoder checkpoint (None without stlpips)."""
    import torch

    from latentgen.autoencoders.perceptual import ShiftTolerantLPIPS
    from latentgen.errors import ConfigError
    from latentgen.config import instantiate
    from latentgen.app.building import load_system_from_checkpoint

    try:
        lpips = ShiftTolerantLPIPS(net="alex").eval()
    except ConfigError:
        return None
    system, stored = load_system_from_checkpoint(str(ckpt))
    system.eval()
    dm = instantiate(stored.data)
    dm.setup("validate")
    values = []
    with torch.no_grad():
        for i, batch in enumerate(dm.val_dataloader()):
            if i >= batches:
                break
            x = batch["image"]
            values.append(lpips(x, system.reconstruct(x)).reshape(-1))  # (B,)
    return float(torch.cat(values).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--autoencoders", nargs="+", default=["kl_f4_tiny", "vq_f4_tiny"])
    p.add_argument("--datasets", nargs="+", default=["patches", "shapes"])
    p.add_argument("--extra", nargs="*", default=[], help="extra Hydra overrides for every job")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/autoencoder_quality.json"))
    p.add_argument("--run-root", default=str(ROOT / "outputs/benchmarks/autoencoder_quality"))
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from latentgen.app.training import train
    from tests.helpers import compose_config

    rows = []
    for data in args.datasets:
        for ae in args.autoencoders:
            out_dir = Path(args.run_root) / f"{ae}-{data}"
            overrides = [
                "model=autoencoder",
                f"autoencoder={ae}",
                f"data={data}",
                f"data.resolution={args.resolution}",
                f"data.batch_size={args.batch_size}",
                f"trainer.max_steps={args.steps}",
                f"trainer.val_check_interval={args.steps}",
                "trainer.limit_val_batches=8",
                "logger=csv",
                "trainer.enable_progress_bar=false",
                "~callbacks.progress_bar",
                *args.extra,
            ]
            cfg = compose_config(overrides, output_dir=str(out_dir))
            start = time.time()
            metrics = train(cfg)
            wall = time.time() - start
            if metrics.get("val/lpips") is None:  # trained without a perceptual term: measure ST-LPIPS anyway
                metrics["val/lpips"] = st_lpips_of_reconstructions(out_dir / "checkpoints" / "last.ckpt", batches=8)
            row = {
                "autoencoder": ae,
                "data": data,
                "steps": args.steps,
                "batch_size": args.batch_size,
                "psnr": metrics.get("val/psnr"),
                "ssim": metrics.get("val/ssim"),
                "lpips": metrics.get("val/lpips"),
                "l1": metrics.get("val/l1"),
                "train_images_per_s": args.steps * args.batch_size / metrics.get("train_wall_time_s", wall),
                "wall_s": wall,
                "grid": str(out_dir / "images" / "final.png"),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)

    header = f"{'autoencoder':<12} {'data':<8} {'PSNR':>7} {'SSIM':>6} {'LPIPS':>7} {'img/s':>7} {'wall s':>7}"
    print(header)
    for r in rows:
        lp = "-" if r["lpips"] is None else f"{r['lpips']:.4f}"
        print(
            f"{r['autoencoder']:<12} {r['data']:<8} {r['psnr']:7.2f} {r['ssim']:6.3f} {lp:>7} {r['train_images_per_s']:7.1f} {r['wall_s']:7.1f}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
