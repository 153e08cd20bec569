"""The study's plots (matplotlib, Agg): LDM Fig. 6 (FID vs training step), Fig. 7 (FID vs sampling
throughput) and Tab. 8 (reconstruction quality vs f), one line / point set per f (and objective)."""

from __future__ import annotations

import math
from pathlib import Path

from latentgen.sweep.collect import Job


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series_label(job: Job, multi_objective: bool) -> str:
    return f"{job.label} ({job.objective})" if multi_objective else job.label


def _colors(jobs: list[Job]):
    plt = _plt()
    fs = sorted({j.f for j in jobs if j.f is not None})
    cmap = plt.get_cmap("viridis")
    return {f: cmap(i / max(1, len(fs) - 1)) for i, f in enumerate(fs)}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def fid_vs_step(jobs: list[Job], path: Path, metric: str = "fid") -> Path | None:
    """FID (log scale) against training step (left) and against training compute in PFLOP (right)."""
    ok = [j for j in jobs if j.milestones]
    if not ok:
        return None
    plt = _plt()
    multi = len({j.objective for j in ok}) > 1
    colors = _colors(ok)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for j in ok:
        pts = [(e["step"], e["metrics"].get(metric)) for e in j.milestones if _finite(e["metrics"].get(metric))]
        if not pts:
            continue
        steps, vals = zip(*pts)
        style = "--" if multi and j.objective != sorted({k.objective for k in ok})[0] else "-"
        kw = dict(marker="o", linestyle=style, color=colors.get(j.f), label=_series_label(j, multi))
        axes[0].plot(steps, vals, **kw)
        flops = j.compute.get("flops_per_step")
        if flops:
            axes[1].plot([s * flops / 1e12 for s in steps], vals, **kw)
    steps_note = {e.get("sampling_steps") for j in ok for e in j.milestones}
    n = {e.get("num_samples") for j in ok for e in j.milestones}
    axes[0].set_xlabel("training step")
    axes[1].set_xlabel("training compute of the denoiser (TFLOP, forward+backward)")
    for ax in axes:
        ax.set_ylabel(metric.upper() if metric == "fid" else metric)
        ax.set_yscale("log" if metric == "fid" else "linear")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].set_xscale("log")
    from matplotlib.ticker import NullFormatter

    for ax in axes:
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"{metric.upper()} during training (EMA, {_fmt_set(steps_note)} sampler steps, "
        f"{_fmt_set(n)} samples) — cf. LDM Fig. 6"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fid_vs_throughput(jobs: list[Job], path: Path) -> Path | None:
    """FID of the final EMA model against sampling images/s, one point per sampling-step count."""
    ok = [j for j in jobs if j.finals]
    if not ok:
        return None
    plt = _plt()
    multi = len({j.objective for j in ok}) > 1
    colors = _colors(ok)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for j in ok:
        pts = [(e.get("sampling_images_per_s"), e["metrics"].get("fid"), e.get("sampling_steps")) for e in j.finals]
        pts = [p for p in pts if _finite(p[0]) and _finite(p[1])]
        if not pts:
            continue
        x, y, s = zip(*pts)
        ax.plot(
            x,
            y,
            marker="o",
            color=colors.get(j.f),
            label=_series_label(j, multi),
            linestyle="--" if multi and j.objective != sorted({k.objective for k in ok})[0] else "-",
        )
        for xi, yi, si in pts:
            ax.annotate(str(si), (xi, yi), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sampling throughput (images/s, this machine)")
    ax.set_ylabel("FID")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("FID vs sampling speed (labels: DDIM steps) — cf. LDM Fig. 7", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def reconstruction_vs_f(jobs: list[Job], path: Path) -> Path | None:
    """rFID, PSNR, SSIM and LPIPS of each f's first stage (f=1 is exact: PSNR capped, rFID 0)."""
    rows = {}
    for j in jobs:
        if j.f is not None and j.reconstruction:
            rows.setdefault(j.f, j.reconstruction)
    if not rows:
        return None
    plt = _plt()
    fs = sorted(rows)
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.4))
    for ax, (key, name) in zip(
        axes, [("rfid", "rFID"), ("psnr_mean", "PSNR (dB)"), ("ssim_mean", "SSIM"), ("lpips_mean", "LPIPS")]
    ):
        vals = [rows[f].get(key) for f in fs]
        # an exact first stage (identity, f=1) has PSNR "infinity" (capped at 100 dB): left out of that panel
        pts = [(f, v) for f, v in zip(fs, vals) if _finite(v) and not (key == "psnr_mean" and v >= 99.0)]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
        if key == "psnr_mean" and len(pts) < sum(_finite(v) for v in vals):
            ax.annotate("exact (identity)\nleft out", (fs[0], min(p[1] for p in pts) if pts else 0), fontsize=7)
        ax.set_xscale("log", base=2)
        ax.set_xticks(fs)
        ax.set_xticklabels([str(f) for f in fs])
        ax.set_xlabel("f")
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
    fig.suptitle("First-stage reconstruction vs downsampling factor — cf. LDM Tab. 8")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt_set(values) -> str:
    vals = sorted(v for v in values if v is not None)
    return "/".join(str(v) for v in vals) if vals else "?"


def make_plots(jobs: list[Job], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    made = {
        "fid_vs_step": fid_vs_step(jobs, out_dir / "fid_vs_step.png"),
        "fid_vs_throughput": fid_vs_throughput(jobs, out_dir / "fid_vs_throughput.png"),
        "reconstruction_vs_f": reconstruction_vs_f(jobs, out_dir / "reconstruction_vs_f.png"),
        "precision_recall_vs_step": None,
    }
    ok = [j for j in jobs if j.milestones]
    if ok:
        plt = _plt()
        multi = len({j.objective for j in ok}) > 1
        colors = _colors(ok)
        fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
        for ax, m in zip(axes, ["precision", "recall", "density", "coverage"]):
            for j in ok:
                pts = [(e["step"], e["metrics"].get(m)) for e in j.milestones if _finite(e["metrics"].get(m))]
                if pts:
                    ax.plot(*zip(*pts), marker="o", color=colors.get(j.f), label=_series_label(j, multi))
            ax.set_title(m)
            ax.set_xlabel("training step")
            ax.grid(True, alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / "precision_recall_vs_step.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made["precision_recall_vs_step"] = path
    return {k: v for k, v in made.items() if v is not None}
