"""Figures and a table of the few-step experiment from the evaluation multiruns of teacher and student.

    python experiments/few_step/plot.py --teacher <multirun dir> --student <multirun dir> [--stage <run dir>]

Reads every ``*/metrics.json`` below the two folders (one per step count), writes ``fid_vs_nfe.png``,
``results.json`` and prints a markdown table. NFE counts network passes per image: a guided teacher makes two
per step (conditional and unconditional), the student one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def read_runs(folder: Path) -> list[dict]:
    runs = []
    for path in sorted(folder.glob("**/metrics.json")):
        rec = json.loads(path.read_text())
        passes = 2 if float(rec.get("guidance_scale") or 1.0) != 1.0 else 1
        runs.append(
            {
                "steps": int(rec["steps"]),
                "nfe": int(rec["nfe"]) * passes,
                "fid": rec["metrics"]["fid"],
                "precision": rec["metrics"].get("precision"),
                "recall": rec["metrics"].get("recall"),
                "images_per_s": rec["metrics"].get("sampling_images_per_s"),
                "num_samples": rec.get("num_samples"),
            }
        )
    return sorted(runs, key=lambda r: r["steps"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--student", type=Path, required=True)
    parser.add_argument("--stage", type=Path, default=None, help="the student's run dir (its metrics.json)")
    parser.add_argument("--one-step", type=Path, default=None, help="evaluations of a one-step distilled student")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {"teacher": read_runs(args.teacher), "student (reflow)": read_runs(args.student)}
    if args.one_step is not None:
        rows["student (reflow + one-step)"] = read_runs(args.one_step)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for name, runs in rows.items():
        nfe = [r["nfe"] for r in runs]
        for ax, key in zip(axes, ("fid", "precision", "recall"), strict=True):
            ax.plot(nfe, [r[key] for r in runs], "o-", label=name)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("network passes per image")
            ax.set_title(key.upper() if key == "fid" else key)
    axes[0].set_yscale("log")
    axes[0].legend()
    fig.suptitle("Euler sampler; the guided teacher makes 2 passes per step, the students 1", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out / "fid_vs_nfe.png", dpi=120)
    record = {"runs": rows}
    if args.stage is not None:
        record["stage"] = json.loads((args.stage / "metrics.json").read_text())["metrics"]
    (args.out / "results.json").write_text(json.dumps(record, indent=2, default=str))
    print("| model | steps | NFE/image | FID | precision | recall | img/s |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in rows.items():
        for r in runs:
            print(
                f"| {name} | {r['steps']} | {r['nfe']} | {r['fid']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} "
                f"| {r['images_per_s']:.1f} |"
            )


if __name__ == "__main__":
    main()
