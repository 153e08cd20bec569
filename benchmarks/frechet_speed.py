"""Time the Fréchet distance: latentgen's symmetric-eigenvalue float64 form vs scipy.linalg.sqrtm (TTUR / pytorch-fid).

    python benchmarks/frechet_speed.py                 # 2048-d (scipy takes ~1 min or more on one core)
    python benchmarks/frechet_speed.py --dim 512 --threads 2 --repeats 3

Covariances come from random correlated features (n = dim + 1000 samples, so both are full rank and
ill-conditioned like Inception's). Candidates run interleaved in one process with a pinned thread
count. Prints a table and writes JSON (default benchmarks/results/frechet_speed.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path


def _scipy_fid(mu1, s1, mu2, s2) -> float:
    """The reference formula (TTUR fid.py / pytorch-fid): sqrtm of the product, with its eps fallback."""
    import numpy as np
    from scipy import linalg

    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _eigvals_fid(mu1, s1, mu2, s2) -> float:
    """torch-fidelity 0.4's formula: eigenvalues of the (non-symmetric) product."""
    import numpy as np

    diff = mu1 - mu2
    tr = np.sum(np.sqrt(np.linalg.eigvals(s1.dot(s2)).astype("complex128")).real)
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * tr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1, help="timed runs per candidate (interleaved)")
    p.add_argument("--skip-scipy", action="store_true", help="skip scipy.linalg.sqrtm (slow at 2048-d)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "frechet_speed.json")
    args = p.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    except ImportError:
        pass

    from latentgen.metrics.frechet import feature_statistics, frechet_distance, trace_sqrt_product

    d, n = args.dim, args.dim + 1000
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(d, d, generator=g) / d**0.5  # correlated features
    f1 = torch.relu(torch.randn(n, d, generator=g) @ mix)  # (n, d), non-negative like pool3
    f2 = torch.relu(torch.randn(n, d, generator=g) @ mix * 1.05 + 0.02)
    mu1, s1 = feature_statistics(f1)
    mu2, s2 = feature_statistics(f2)
    np_args = tuple(t.numpy() for t in (mu1, s1, mu2, s2))

    def ours_eigh() -> float:
        diff = mu1 - mu2
        tr = trace_sqrt_product(s1, s2, method="eigh")
        return float(diff.dot(diff) + torch.trace(s1) + torch.trace(s2) - 2 * tr)

    candidates = {
        "latentgen (cholesky + eigvalsh, float64)": lambda: frechet_distance(mu1, s1, mu2, s2),
        "latentgen, eigh path (eigh + eigvalsh)": ours_eigh,
        "torch-fidelity 0.4 (np.linalg.eigvals)": lambda: _eigvals_fid(*np_args),
    }
    if not args.skip_scipy:
        candidates["scipy.linalg.sqrtm (TTUR / pytorch-fid)"] = lambda: _scipy_fid(*np_args)

    times: dict[str, list[float]] = {k: [] for k in candidates}
    values: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            values[name] = fn()
            times[name].append(time.perf_counter() - t0)

    ours = values["latentgen (cholesky + eigvalsh, float64)"]
    rows = []
    for name in candidates:
        med = statistics.median(times[name])
        rows.append({"method": name, "seconds_median": med, "seconds_all": times[name], "fid": values[name],
                     "rel_diff_vs_latentgen": abs(values[name] - ours) / abs(ours)})  # fmt: skip
    width = max(len(r["method"]) for r in rows)
    print(f"Fréchet distance at dim={d} (n={n} samples per set), {args.threads} thread(s), {args.repeats} run(s)")
    print(f"{'method':<{width}}  {'median s':>9}  {'FID':>14}  {'rel. diff':>9}")
    for r in rows:
        print(
            f"{r['method']:<{width}}  {r['seconds_median']:>9.2f}  {r['fid']:>14.6f}  "
            f"{r['rel_diff_vs_latentgen']:>9.1e}"
        )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "dim": d, "num_samples": n, "threads": args.threads, "repeats": args.repeats, "results": rows,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "python": sys.version.split()[0],
                    "torch": torch.__version__, "numpy": np.__version__},
    }, indent=2))  # fmt: skip
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
