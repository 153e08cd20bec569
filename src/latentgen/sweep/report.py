"""The report of a sweep: markdown tables + plots (+ a W&B table and images) from the finished jobs.

    python -m latentgen.sweep report multirun/<date>/<time> [--out DIR] [--wandb]

Writes ``<out>/report.md``, ``<out>/report.json`` (the rows) and the PNGs of :mod:`latentgen.sweep.plots`
(default ``<out>`` = ``<sweep dir>/report``). Works on a partially finished sweep: jobs that failed,
are unfinished or never started are listed with their reason.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from latentgen.sweep.collect import Job, collect
from latentgen.sweep.plots import make_plots


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 100_000:
        return f"{v / 1e6:.2f}M"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if math.isinf(v):
            return "∞"
        if abs(v) < 1e-6:
            return "0"
        if abs(v) >= 1000:
            return f"{v:.0f}"
        if abs(v) >= 100:
            return f"{v:.1f}"
        return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:.{digits + 1}g}"
    return str(v)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _sort_key(j: Job):
    return (j.objective, j.f if j.f is not None else 1 << 30, j.num or 0)


def _psnr(rec: dict[str, float]) -> Any:
    v = rec.get("psnr_mean")
    return "exact" if isinstance(v, float) and v >= 99.0 else v  # identity first stage: PSNR is capped at 100


def summary_rows(jobs: list[Job]) -> list[dict[str, Any]]:
    """One dict per finished job: everything the tables and the W&B table show."""
    rows = []
    for j in sorted((j for j in jobs if j.status == "ok"), key=_sort_key):
        rec = j.reconstruction
        last = j.milestones[-1] if j.milestones else {}
        c = j.compute
        row: dict[str, Any] = {
            "job": j.num, "f": j.f, "pretrained": j.pretrained, "objective": j.objective, "z_shape": j.latent_shape,
            "rfid": rec.get("rfid"), "psnr": rec.get("psnr_mean"), "ssim": rec.get("ssim_mean"),
            "lpips": rec.get("lpips_mean"),
            "last_step": last.get("step"), **{f"{k}": (last.get("metrics") or {}).get(k)
                                                for k in ("fid", "precision", "recall", "density", "coverage")},
            "params_denoiser": c.get("params_denoiser"),
            "gflop_per_image_train": (c.get("flops_per_image") or 0) / 1e9 or None,
            "train_images_per_s": c.get("train_images_per_s"), "peak_cpu_rss_mb": c.get("peak_cpu_rss_mb"),
            "peak_accelerator_memory_mb": c.get("peak_accelerator_memory_mb"),
            "job_wall_time_min": (c.get("job_wall_time_s") or 0) / 60 or None,
            "first_stage_train_s": j.first_stage.get("train_wall_time_s"),
        }  # fmt: skip
        for e in j.finals:
            s = e.get("sampling_steps")
            row[f"fid@{s}"] = e["metrics"].get("fid")
            row[f"sampling_images_per_s@{s}"] = e.get("sampling_images_per_s")
        for e in j.milestones:
            row[f"fid@step{e['step']}"] = e["metrics"].get("fid")
        rows.append(row)
    return rows


def render_markdown(sweep_dir: Path, jobs: list[Job], plots: dict[str, Path], out_dir: Path) -> str:
    ok = sorted((j for j in jobs if j.status == "ok"), key=_sort_key)
    counts = {s: sum(j.status == s for j in jobs) for s in ("ok", "failed", "unfinished", "not started")}
    parts = [f"# Sweep report: `{sweep_dir}`", ""]
    parts.append(", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no jobs found")
    parts.append("")
    status_rows = []
    for j in sorted(jobs, key=lambda j: (j.num is None, j.num or 0)):
        note = j.error or ""
        if j.status == "unfinished":
            note = "no metrics.json yet (running, or killed)"
        elif j.status == "not started":
            note = "implied by multirun.yaml, no job dir"
        status_rows.append([j.num, j.label, j.objective, j.status, note.replace("|", "/")[:160]])
    parts += ["## Jobs", "", _table(["job", "f", "objective", "status", "note"], status_rows), ""]
    if not ok:
        parts.append("No finished job yet.")
        return "\n".join(parts) + "\n"

    e0 = next((e for j in ok for e in j.milestones), {})
    parts += [
        f"Feature extractor: {e0.get('extractor', '?')}; {e0.get('num_samples', '?')} generated vs "
        f"{e0.get('num_reference', '?')} real images per evaluation; EMA weights. FIDs on a few hundred samples "
        "are biased upwards: compare them only within this table.",
        "",
    ]
    rows = []
    for j in ok:
        rec = j.reconstruction
        rows.append(
            [
                j.label,
                j.objective,
                j.latent_shape,
                rec.get("rfid"),
                _psnr(rec),
                rec.get("ssim_mean"),
                rec.get("lpips_mean"),
                j.first_stage.get("train_wall_time_s"),
            ]
        )
    parts += [
        "## First stage: reconstruction (cf. LDM Tab. 8)",
        "",
        _table(["f", "objective", "z-shape", "rFID", "PSNR", "SSIM", "LPIPS", "AE train s"], rows),
        "",
    ]

    steps = sorted({e["step"] for j in ok for e in j.milestones})
    samp = sorted({e.get("sampling_steps") for j in ok for e in j.milestones if e.get("sampling_steps")})
    rows = []
    for j in ok:
        by_step = {e["step"]: e["metrics"] for e in j.milestones}
        rows.append([j.label, j.objective] + [(by_step.get(s) or {}).get("fid") for s in steps])
    parts += [
        f"## FID during training (cf. LDM Fig. 6; {'/'.join(map(str, samp))} sampler steps)",
        "",
        _table(["f", "objective"] + [f"step {s}" for s in steps], rows),
        "",
    ]
    rows = []
    for j in ok:
        for e in j.milestones:
            m = e["metrics"]
            rows.append(
                [
                    j.label,
                    j.objective,
                    e["step"],
                    m.get("fid"),
                    m.get("precision"),
                    m.get("recall"),
                    m.get("density"),
                    m.get("coverage"),
                    e.get("wall_time_s"),
                ]
            )
    parts += [
        "### All milestone metrics",
        "",
        _table(["f", "objective", "step", "FID", "precision", "recall", "density", "coverage", "wall s"], rows),
        "",
    ]

    rows = []
    for j in ok:
        for e in j.finals:
            m = e["metrics"]
            rows.append(
                [
                    j.label,
                    j.objective,
                    e.get("sampling_steps"),
                    e.get("nfe"),
                    m.get("fid"),
                    m.get("precision"),
                    m.get("recall"),
                    m.get("density"),
                    m.get("coverage"),
                    e.get("sampling_images_per_s"),
                ]
            )
    if rows:
        parts += [
            "## Final EMA model vs sampling steps (cf. LDM Fig. 7)",
            "",
            _table(
                [
                    "f",
                    "objective",
                    "steps",
                    "NFE",
                    "FID",
                    "precision",
                    "recall",
                    "density",
                    "coverage",
                    "sampling img/s",
                ],
                rows,
            ),
            "",
        ]

    rows = []
    for j in ok:
        c = j.compute
        rows.append(
            [
                j.label,
                j.objective,
                c.get("params_denoiser"),
                (c.get("flops_per_image") or 0) / 1e9 or None,
                c.get("global_batch_size"),
                c.get("train_images_per_s"),
                (c.get("train_images_per_s") or 0) / max(1, c.get("global_batch_size") or 1) or None,
                c.get("peak_cpu_rss_mb"),
                c.get("peak_accelerator_memory_mb"),
                (c.get("job_wall_time_s") or 0) / 60 or None,
            ]
        )
    parts += [
        "## Compute",
        "",
        _table(
            [
                "f",
                "objective",
                "denoiser params",
                "GFLOP/img (train fwd+bwd)",
                "batch",
                "train img/s",
                "train steps/s",
                "peak RSS MB",
                "peak accel. MB",
                "job wall min",
            ],
            rows,
        ),
        "",
    ]
    if plots:
        parts += ["## Plots", ""]
        for name, path in plots.items():
            rel = os.path.relpath(path, out_dir)
            parts.append(f"![{name}]({rel})")
        parts.append("")
    return "\n".join(parts) + "\n"


def log_to_wandb(
    jobs: list[Job],
    rows: list[dict[str, Any]],
    plots: dict[str, Path],
    out_dir: Path,
    project: str | None = None,
    group: str | None = None,
) -> str | None:
    """The summary as a W&B table and the plots as images, in the sweep's group (offline without a key)."""
    import wandb

    from latentgen.logging import resolve_wandb_mode

    cfg_logger = next((j.config.get("logger") or {} for j in jobs if j.config.get("logger")), {})
    group = group or cfg_logger.get("group")
    project = project or cfg_logger.get("project") or "latentgen"
    run = wandb.init(project=project, group=group, job_type="sweep-report", dir=str(out_dir),
                     mode=resolve_wandb_mode("auto"), name=f"report-{group}" if group else None,
                     tags=["sweep-report"])  # fmt: skip
    try:
        columns = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("job", "f", "objective"), k))
        table = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
        run.log({"sweep/summary": table, **{f"sweep/{k}": wandb.Image(str(p)) for k, p in plots.items()}})
        return run.dir
    finally:
        run.finish()


def write_report(sweep_dir: str | Path, out_dir: str | Path | None = None, *, wandb: bool = False) -> dict[str, Any]:
    sweep_dir = Path(sweep_dir)
    jobs = collect(sweep_dir)
    out = Path(out_dir) if out_dir else sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    plots = make_plots(jobs, out)
    rows = summary_rows(jobs)
    md = render_markdown(sweep_dir, jobs, plots, out)
    (out / "report.md").write_text(md)
    result = {
        "sweep_dir": str(sweep_dir),
        "jobs": [{"num": j.num, "f": j.f, "objective": j.objective, "status": j.status, "error": j.error,
                  "dir": str(j.dir) if j.dir else None} for j in jobs],
        "rows": rows,
        "plots": {k: str(v) for k, v in plots.items()},
    }  # fmt: skip
    (out / "report.json").write_text(json.dumps(result, indent=2, default=str))
    if wandb:
        result["wandb_dir"] = log_to_wandb(jobs, rows, plots, out)
    result["markdown"] = md
    return result
