"""Table and figures of the DiT vs UNet / f x p study from a multirun folder of `experiment=f_sweep` jobs.

    python experiments/dit_vs_unet/analyze.py <multirun dir> [--out experiments/dit_vs_unet]

Reads every job's `metrics.json` (latent contract, compute accounting), `eval_history.json` (milestone and
final evaluations) and `.hydra/overrides.yaml` (the `ldm=` choice that names the job), and writes
`results.json`, `results.md` and the PNGs into --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NAMES = {"f4": "UNet f=4", "dit_f4p2": "DiT f=4 p=2", "dit_f2p4": "DiT f=2 p=4", "dit_f8p1": "DiT f=8 p=1"}


def read_job(job: Path) -> dict | None:
    metrics, history = job / "metrics.json", job / "eval_history.json"
    if not metrics.is_file() or not history.is_file():
        return None
    m = json.loads(metrics.read_text())
    h = json.loads(history.read_text())
    overrides = (job / ".hydra" / "overrides.yaml").read_text().splitlines()
    ldm = next(o.split("=", 1)[1] for o in (line.lstrip("- ") for line in overrides) if o.startswith("ldm="))
    compute = m.get("compute", {})
    sec_per_image = 1.0 / compute["train_images_per_s"]
    batch = compute["train_images"] / max(1, m["metrics"]["global_step"])
    evals = [
        {
            "step": e["step"],
            "train_s": e["step"] * batch * sec_per_image,
            "train_gflop": e["step"] * compute.get("flops_per_step", 0) / 1e9,
            **{k: e["metrics"][k] for k in ("fid", "precision", "recall", "density", "coverage")},
        }
        for e in sorted(h.get("evals", []), key=lambda e: e["step"])
    ]
    finals = [
        {
            "sampling_steps": e["sampling_steps"],
            "nfe": e.get("nfe"),
            "sampling_images_per_s": e.get("sampling_images_per_s"),
            **{k: e["metrics"][k] for k in ("fid", "precision", "recall")},
        }
        for e in sorted(h.get("final", []), key=lambda e: e["sampling_steps"])
    ]
    rec = (h.get("reconstruction") or {}).get("metrics") or {}
    lr = next(
        (o.split("=", 1)[1] for o in (line.lstrip("- ") for line in overrides) if o.startswith("model.optimizer.lr=")),
        None,
    )
    return {
        "job": job.name,
        "ldm": ldm,
        "name": NAMES.get(ldm, ldm) + (f" (lr {lr})" if lr else ""),
        "latent_shape": compute.get("latent_shape") or m.get("latent", {}).get("latent_shape"),
        "params": compute.get("params_denoiser"),
        "batch": batch,
        "train_images_per_s": compute["train_images_per_s"],
        "train_time_s": compute.get("train_time_s"),
        "gflop_per_step": compute.get("flops_per_step", 0) / 1e9,
        "rec_psnr": rec.get("psnr_mean"),
        "evals": evals,
        "finals": finals,
    }


def markdown(jobs: list[dict]) -> str:
    lines = [
        "| model | z-shape | params | batch | GFLOP/step (train) | train s/step | FID @ milestones (train s) "
        "| final FID / P / R (10 steps) | sampling img/s (10 steps) | first-stage PSNR |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for j in jobs:
        c, h, w = j["latent_shape"] or ("?", "?", "?")
        fids = ", ".join(f"{e['fid']:.1f} ({e['train_s']:.0f} s)" for e in j["evals"])
        f10 = next((f for f in j["finals"] if f["sampling_steps"] == 10), None)
        final = f"{f10['fid']:.1f} / {f10['precision']:.2f} / {f10['recall']:.2f}" if f10 else "-"
        speed = f"{f10['sampling_images_per_s']:.1f}" if f10 and f10["sampling_images_per_s"] else "-"
        lines.append(
            f"| {j['name']} | {h}x{w}x{c} | {j['params'] / 1e6:.2f}M | {j['batch']:.0f} | {j['gflop_per_step']:.2f} | "
            f"{j['batch'] / j['train_images_per_s']:.3f} | {fids} | {final} | {speed} | {j['rec_psnr'] or 0:.1f} |"
        )
    return "\n".join(lines) + "\n"


def plots(jobs: list[dict], out: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for j in jobs:
        xs = [e["train_s"] for e in j["evals"]]
        axes[0].plot(xs, [e["fid"] for e in j["evals"]], "o-", label=j["name"])
        axes[1].plot([e["train_gflop"] for e in j["evals"]], [e["fid"] for e in j["evals"]], "o-", label=j["name"])
        axes[2].plot([e["recall"] for e in j["evals"]], [e["precision"] for e in j["evals"]], "o-", label=j["name"])
    axes[0].set(xlabel="training time inside batches (s, shared 2-core CPU)", ylabel="FID (dataset classifier)")
    axes[1].set(xlabel="training GFLOP (denoiser, forward + backward)", ylabel="FID (dataset classifier)")
    axes[2].set(xlabel="recall", ylabel="precision", title="milestones (10 sampler steps)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "fid_vs_compute.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 4))
    for j in jobs:
        pts = [(f["sampling_images_per_s"], f["fid"]) for f in j["finals"] if f["sampling_images_per_s"]]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=j["name"])
    ax.set(xlabel="sampling images / s (10 and 20 steps, incl. decoding)", ylabel="final FID")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "fid_vs_sampling_speed.png", dpi=100)
    plt.close(fig)


def samples(multirun: Path, jobs: list[dict], out: Path) -> None:
    """The final EMA sample grid of every job side by side (36 samples each)."""
    fig, axes = plt.subplots(1, len(jobs), figsize=(3 * len(jobs), 3.3), squeeze=False)
    for ax, j in zip(axes[0], jobs):
        ax.imshow(plt.imread(multirun / j["job"] / "images" / "final.png"), cmap="gray")
        ax.set_title(j["name"])
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "samples.png", dpi=80)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("multirun", type=Path)
    p.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = p.parse_args()
    jobs = [j for d in sorted(args.multirun.iterdir()) if d.is_dir() and (j := read_job(d))]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(jobs, indent=1))
    (args.out / "results.md").write_text(markdown(jobs))
    plots(jobs, args.out)
    samples(args.multirun, jobs, args.out)
    print(markdown(jobs))


if __name__ == "__main__":
    main()
