"""The downsampling-factor study through the real CLI: `train.py -m experiment=f_sweep` with tiny settings,
then `python -m latentgen.sweep report`; the basic launcher (with a failing job and a re-run that
skips the finished ones) and the submitit_local launcher."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.helpers import TINY_SWEEP, run_cli


def _sweep(sweep_dir: Path, root: Path, *extra: str):
    return run_cli(
        ["train.py", "-m", "experiment=f_sweep", *extra, *TINY_SWEEP, f"hydra.sweep.dir={sweep_dir}"], root, timeout=400
    )


def _record(job: Path) -> dict:
    return json.loads((job / "metrics.json").read_text())


def _report(sweep_dir: Path, root: Path) -> str:
    proc = run_cli(["-m", "latentgen.sweep", "report", str(sweep_dir), "--out", str(root / "report")], root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("fid_vs_step", "fid_vs_throughput", "reconstruction_vs_f"):
        assert (root / "report" / f"{name}.png").is_file(), name
    return (root / "report" / "report.md").read_text()


def test_basic_launcher_sweep_reports_skips_finished_jobs_and_survives_a_failure(tmp_path):
    sweep_dir = tmp_path / "multirun" / "2026-01-01" / "00-00-00"
    # f=32 cannot downsample 16 px images: that job fails; the f=1 job must finish and be reported.
    # (f=4, with its first stage trained in the job, runs in the submitit_local test.)
    proc = _sweep(sweep_dir, tmp_path, "ldm=f1,f32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ok, failed = sweep_dir / "0", sweep_dir / "1"
    for job, f in ((ok, 1),):
        record = _record(job)
        assert record["status"] == "ok" and record["latent"]["downsample_factor"] == f
        compute = record["compute"]
        assert compute["flops_per_image"] > 0 and compute["train_images_per_s"] > 0 and compute["peak_cpu_rss_mb"] > 0
        assert compute["params_denoiser"] > 0 and compute["job_wall_time_s"] > 0
        history = json.loads((job / "eval_history.json").read_text())
        assert [e["step"] for e in history["evals"]] == [2, 4]
        assert [e["sampling_steps"] for e in history["final"]] == [2, 3]
        assert "fid" in history["evals"][0]["metrics"] and "coverage" in history["final"][0]["metrics"]
        assert history["evals"][0]["seconds"]["sampling"] > 0  # phase times beside, not among, the metrics
        assert not any(k.startswith("seconds") for k in history["evals"][0]["metrics"])
        assert history["reconstruction"]["metrics"]["psnr_mean"] > 0
        assert f"ldm=f{f}" in record["config"]["logger"]["tags"]  # the group choices of its overrides
    assert _record(ok)["config"]["logger"]["group"] == "f_sweep-2026-01-01_00-00-00"
    assert _record(failed)["status"] == "failed" and "not divisible" in (failed / "error.txt").read_text()

    md = _report(sweep_dir, tmp_path)
    assert "1 ok, 1 failed" in md
    assert "| f=1 | ddpm_eps |" in md
    assert "| 1 | ldm=f32 | ddpm_eps | failed | ConfigError" in md  # no latent contract: named by its choice

    # Re-running the same sweep into the same dir trains nothing again (the failed job is tried again).
    before = (ok / "metrics.json").stat().st_mtime_ns
    proc = _sweep(sweep_dir, tmp_path, "ldm=f1,f32")
    assert proc.returncode == 0
    log = proc.stdout + proc.stderr
    assert log.count("finished before with the same config") == 1, log[-3000:]
    assert (ok / "metrics.json").stat().st_mtime_ns == before


@pytest.mark.slow
def test_submitit_local_launcher_runs_the_sweep(tmp_path):
    sweep_dir = tmp_path / "multirun" / "submitit"
    proc = _sweep(sweep_dir, tmp_path, "ldm=f1,f4", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1"):
        assert _record(sweep_dir / job)["status"] == "ok"
    assert json.loads((sweep_dir / "1" / "eval_history.json").read_text())["reconstruction"]["metrics"]["rfid"] >= 0
    md = _report(sweep_dir, tmp_path)
    assert "2 ok" in md and "| f=1 | ddpm_eps |" in md and "| f=4 | ddpm_eps |" in md


def test_in_training_evaluation_under_ddp_shares_the_work_and_agrees_across_ranks(tmp_path):
    """The GenerativeEvalCallback is collective under DDP: both ranks sample half of the evaluation
    batches, the features are gathered (16 samples, not 32), every rank gets the same numbers, and the
    first-stage reconstruction metrics count each val image once (no NaN from the absent LPIPS).
    Before, the evaluation ran on rank 0 only and its metric sync waited for a rank that never came."""
    run = tmp_path / "run"
    overrides = [o for o in TINY_SWEEP if not o.startswith("callbacks.generative_eval.batch_size")]
    proc = run_cli(["train.py", "experiment=f_sweep", "ldm=f1", "trainer=ddp_cpu", *overrides,
                    "callbacks.generative_eval.batch_size=8", "logger=csv", f"hydra.run.dir={run}"], tmp_path,
                   timeout=400)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    history = json.loads((run / "eval_history.json").read_text())
    assert [e["step"] for e in history["evals"]] == [2, 4]
    for entry in history["evals"] + history["final"]:
        assert entry["num_samples"] == 16 and entry["metrics"]["num_fake"] == 16
        assert math.isfinite(entry["metrics"]["fid"])
    rec = history["reconstruction"]["metrics"]
    assert rec["num_samples"] == 16 and "lpips_mean" not in rec
    lines = [line.split(" - ", 1)[1] for line in out.splitlines() if "eval at step 4 (final, 3 sampler steps)" in line]
    assert len(lines) == 2 and lines[0] == lines[1]  # rank 0 and rank 1, the same numbers
