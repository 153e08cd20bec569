"""``python -m latentgen.sweep report <multirun dir> [--out DIR] [--wandb]``: the sweep's table and plots."""

from __future__ import annotations

import argparse
import sys

from latentgen.errors import LatentgenError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m latentgen.sweep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="markdown table + PNG plots from the finished jobs of a multirun dir")
    rep.add_argument("sweep_dir", help="the multirun dir, e.g. multirun/2026-01-01/12-00-00 (its job dirs 0, 1, ...)")
    rep.add_argument("--out", default=None, help="output dir (default: <sweep_dir>/report)")
    rep.add_argument(
        "--wandb",
        action="store_true",
        help="also log the table and plots to W&B, in the jobs' group (offline without an API key)",
    )
    args = parser.parse_args(argv)

    from latentgen.sweep.report import write_report

    try:
        result = write_report(args.sweep_dir, args.out, wandb=args.wandb)
    except LatentgenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result["markdown"])
    bad = [j for j in result["jobs"] if j["status"] != "ok"]
    for j in bad:
        print(
            f"job {j['num']} (f={j['f']}, {j['objective']}): {j['status']}"
            + (f": {j['error']}" if j.get("error") else ""),
            file=sys.stderr,
        )
    out = result["plots"] and next(iter(result["plots"].values()))
    print(
        f"wrote {args.out or args.sweep_dir + '/report'}/report.md" + (f" and plots (e.g. {out})" if out else ""),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
