"""The cluster path on a real SLURM (one node, started by tests/cluster/slurm_up.sh; `make test-slurm`).

- a 2-setting f sweep submitted as two SLURM jobs by hydra's submitit launcher, then its report;
- pre-emption and requeue: a job sent SIGUSR2 writes last.ckpt at a batch boundary, is requeued and continues
  in the same run dir and the same W&B run, and ends with the uninterrupted run's weights and EMA exactly:
  through submitit (``hydra/launcher=slurm``) and through the plain sbatch script ``slurm/train.sbatch``;
- DDP started by SLURM: the same sbatch script with ``--ntasks-per-node=2`` and ``trainer=slurm`` (2 gloo
  processes, ranks from Lightning's SLURM environment) trains like one process with the same global batch.

The latent model trains on top of an untrained first-stage export (tests/helpers.py), as in
tests/e2e/test_resume.py; the uninterrupted reference runs in this process.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from latentgen.callbacks.step_log import read_step_log
from latentgen.checkpoint import read_latentgen_checkpoint
from tests.helpers import ROOT, TINY_SWEEP, cli_env, resume_reference

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]

STEPS = 10
# Test-only: slows each batch down so that the signal lands mid-training.
THROTTLE = ["+callbacks.throttle._target_=tests.helpers.Throttle", "+callbacks.throttle.seconds=0.5"]
# The launcher's settings for this 2-CPU node: one CPU per job (so two jobs run side by side), no GPUs.
SUBMITIT = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.gpus_per_node=null"]
# DDP over the 2 tasks SLURM starts, on the CPU (gloo): trainer=slurm with the GPU settings turned off.
SLURM_DDP = [
    "trainer=slurm",
    "trainer.devices=2",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.sync_batchnorm=false",
]
FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


# ---------------------------------------------------------------------------------------------- SLURM plumbing
def _env(tmp: Path, conf: str, **extra: str) -> dict[str, str]:
    """The CLI environment plus the cluster's config; the jobs inherit it (sbatch --export=ALL)."""
    env = cli_env(tmp, SLURM_CONF=conf, PYTHON=sys.executable, **extra)
    env["PYTHONPATH"] = f"{ROOT / 'src'}:{ROOT}"
    return env


def _slurm(args: list[str], conf: str, timeout: float = 30) -> str:
    proc = subprocess.run(args, env=_env(Path("/tmp"), conf), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)}: {proc.stderr}"
    return proc.stdout


def _job(job_id: str, conf: str) -> dict[str, str]:
    """``scontrol show job``'s fields (JobState, Restarts, ExitCode, ...)."""
    out = _slurm(["scontrol", "show", "job", "-o", job_id], conf)
    return dict(re.findall(r"(\w+)=(\S*)", out))


def _wait_job(job_id: str, conf: str, timeout: float) -> dict[str, str]:
    end = time.time() + timeout
    while (info := _job(job_id, conf))["JobState"] not in FINAL_STATES:
        if time.time() > end:
            _slurm(["scancel", job_id], conf)
            raise AssertionError(f"job {job_id} did not finish in {timeout} s: {info}")
        time.sleep(1)
    return info


def _wait_for(ready, timeout: float, what: str, stop=lambda: None) -> None:
    end = time.time() + timeout
    while not ready():
        if (why := stop()) is not None:
            raise AssertionError(f"{what}: {why}")
        if time.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _sbatch(overrides: list[str], tmp: Path, conf: str, run_dir: Path, *options: str) -> str:
    """``sbatch [options] slurm/train.sbatch <overrides>`` (the README's script) with the run dir and log in tmp."""
    proc = subprocess.run(
        ["sbatch", "--parsable", f"--output={tmp}/slurm-%j.out", *options, "slurm/train.sbatch", *overrides],
        cwd=ROOT, env=_env(tmp, conf, RUN_DIR=str(run_dir)), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def _logged_batches(run: Path) -> int:
    log = run / "train_steps.jsonl"
    return len(log.read_text().splitlines()) if log.is_file() else 0


def _job_state_if_over(job_id: str, conf: str):
    state = _job(job_id, conf)["JobState"]
    return f"the job ended ({state}) before the signal" if state in FINAL_STATES else None


# ---------------------------------------------------------------------------------------------- checks
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The first-stage export and the uninterrupted one-process reference run."""
    tmp = tmp_path_factory.mktemp("slurm")
    overrides, ref = resume_reference(tmp, STEPS)
    return tmp, overrides, ref


def _assert_resumed_exactly(run: Path, ref: Path) -> None:
    """Every batch trained once with the reference's loss; final weights and EMA identical; one W&B run."""
    assert json.loads((run / "metrics.json").read_text())["metrics"]["global_step"] == STEPS
    want, got = read_step_log(ref / "train_steps.jsonl"), read_step_log(run / "train_steps.jsonl")
    lines = [json.loads(x) for x in (run / "train_steps.jsonl").read_text().splitlines()]
    assert [r["batch"] for r in lines] == list(range(STEPS)), "a batch was skipped or trained twice"
    assert all(got[i]["train/loss"] == want[i]["train/loss"] for i in want)
    a = read_latentgen_checkpoint(ref / "checkpoints" / "last.ckpt")["state_dict"]
    b = read_latentgen_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    assert a.keys() == b.keys() and any(k.startswith("ema.") for k in a)
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())
    assert worst == 0.0, f"the requeued run's weights differ from the uninterrupted run's by {worst}"
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The same W&B run continued: two offline attempts with the id kept in the run dir.
    run_id = json.loads((run / "wandb_run.json").read_text())["id"]
    attempts = sorted(p.name for p in (run / "wandb").glob("offline-run-*"))
    assert len(attempts) == 2 and all(name.endswith(f"-{run_id}") for name in attempts), attempts


def test_sbatch_script_requeued_after_sigusr2_resumes_exactly(slurm_conf, setup):
    """README's plain `sbatch slurm/train.sbatch` (--requeue, ckpt_path=auto): SIGUSR2 -> last.ckpt at a batch
    boundary, exit 143 -> the script requeues the job -> same job id, same run dir -> resumed exactly."""
    tmp, overrides, ref = setup
    run = tmp / "sbatch"
    job = _sbatch([*overrides, *THROTTLE, "logger=wandb"], tmp, slurm_conf, run)
    _wait_for(lambda: _logged_batches(run) >= 4, 300, "4 trained batches", lambda: _job_state_if_over(job, slurm_conf))
    _slurm(["scancel", "--signal=USR2", job], slurm_conf)
    info = _wait_job(job, slurm_conf, timeout=400)
    out = (tmp / f"slurm-{job}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, out[-4000:])
    assert "stopped by SIGUSR2" in out and f"Restored all states from the checkpoint at {run}" in out
    assert f"job {job} restart 1 on" in out
    _assert_resumed_exactly(run, ref)


def test_submitit_job_requeued_after_sigusr2_resumes_exactly(slurm_conf, setup):
    """hydra/launcher=slurm: SIGUSR2 -> last.ckpt at a batch boundary -> submitit's handler requeues the job ->
    the requeued job runs the same sweep job in the same dir, ckpt_path=auto resumes it exactly."""
    tmp, overrides, ref = setup
    sweep = tmp / "submitit"
    args = [sys.executable, "train.py", "-m", *SUBMITIT, *overrides, *THROTTLE, "logger=wandb", "ckpt_path=auto"]
    proc = subprocess.Popen(
        [*args, f"hydra.sweep.dir={sweep}"], cwd=ROOT, env=_env(tmp, slurm_conf),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    run = sweep / "0"
    try:
        _wait_for(lambda: _logged_batches(run) >= 4, 300, "4 trained batches", lambda: proc.poll())
        (job,) = [p.name for p in (sweep / ".submitit").iterdir() if p.name.isdigit()]
        _slurm(["scancel", "--signal=USR2", job], slurm_conf)
        out, _ = proc.communicate(timeout=500)  # the launcher waits for the requeued job's result
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-4000:]
    info = _wait_job(job, slurm_conf, timeout=60)  # the result is written before the job step ends
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", info
    job_log = "".join(p.read_text() for p in (sweep / ".submitit" / job).glob("*_log.*"))
    assert "stopped by SIGUSR2" in job_log and "Requeued job" in job_log, job_log[-4000:]
    _assert_resumed_exactly(run, ref)


def test_srun_ddp_two_tasks_train_like_one_process(slurm_conf, setup):
    """`sbatch --ntasks-per-node=2 slurm/train.sbatch trainer=slurm ...`: SLURM starts both ranks, Lightning takes
    them from its SLURM environment (gloo), and the weights equal one process's with the same global batch."""
    tmp, overrides, ref = setup
    run = tmp / "srun_ddp"
    rank_check = "+callbacks.rank_check._target_=latentgen.callbacks.rank_check.RankConsistencyCheck"
    job = _sbatch([*overrides, *SLURM_DDP, "logger=none", rank_check], tmp, slurm_conf, run, "--ntasks-per-node=2")
    info = _wait_job(job, slurm_conf, timeout=400)
    out = (tmp / f"slurm-{job}.out").read_text()
    assert info["JobState"] == "COMPLETED", (info, out[-4000:])
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in out and "DDP ranks agree" in out, out[-4000:]
    a = read_latentgen_checkpoint(ref / "checkpoints" / "last.ckpt")["state_dict"]
    b = read_latentgen_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())
    print(f"srun DDP (2 tasks) vs one process: max |weight difference| = {worst:.3g}")
    assert worst < 1e-4, f"DDP under srun and one process differ by {worst}"
    want, got = read_step_log(ref / "train_steps.jsonl"), read_step_log(run / "train_steps.jsonl")
    assert sorted(got) == list(range(STEPS))
    assert max(abs(got[i]["train/loss"] - want[i]["train/loss"]) for i in want) < 1e-5


def test_f_sweep_runs_as_slurm_jobs_and_reports(tmp_path, slurm_conf):
    """`train.py -m experiment=f_sweep ldm=f4,f8 hydra/launcher=slurm ...`: one SLURM job per f, both finish
    (first stage, latent model, evaluations), and `python -m latentgen.sweep report` tabulates them."""
    sweep = tmp_path / "multirun" / "2026-01-01" / "00-00-00"
    args = ["train.py", "-m", "experiment=f_sweep", "ldm=f4,f8", *SUBMITIT, "hydra.launcher.timeout_min=30"]
    proc = subprocess.run(
        [sys.executable, *args, *TINY_SWEEP, f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, env=_env(tmp_path, slurm_conf), capture_output=True, text=True, timeout=800,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    # One SLURM job per setting: submitit submits them as the tasks of one job array (<array id>_<task>).
    jobs = sorted(p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name))
    assert len(jobs) == 2, jobs
    for job in jobs:
        assert _wait_job(job, slurm_conf, timeout=60)["JobState"] == "COMPLETED"
    for sub, f in (("0", 4), ("1", 8)):
        record = json.loads((sweep / sub / "metrics.json").read_text())
        assert record["status"] == "ok" and record["latent"]["downsample_factor"] == f
    report = subprocess.run(
        [sys.executable, "-m", "latentgen.sweep", "report", str(sweep), "--out", str(tmp_path / "report")],
        cwd=ROOT, env=_env(tmp_path, slurm_conf), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "2 ok" in md and "| f=4 | ddpm_eps |" in md and "| f=8 | ddpm_eps |" in md, md
