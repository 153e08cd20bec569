"""Exact resume, pre-emption and 2-process DDP through the real command line.

One reference run (in-process, one device, global batch 8) and, through ``train.py`` in subprocesses:

- a run killed with SIGKILL after its step-3 checkpoint, resumed with ``ckpt_path=last``, stopped by
  SIGTERM (which writes ``last.ckpt`` where it stops, exit code 143) and resumed again: its loss curve
  and final weights equal the uninterrupted run's, bit for bit;
- the same training with ``trainer=ddp_cpu`` (2 gloo processes, 4 samples each): the same weights to
  float tolerance, ranks in agreement, only rank 0 writing, and no W&B key in any file of the run dir.

The latent model trains on 36 images (4 batches per epoch, so 10 steps cross epoch boundaries) on top
of an untrained first-stage export (tests/first_stage.py), so no autoencoder is trained here.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from latentgen.callbacks.preemption import PREEMPTED_EXIT_CODE
from latentgen.callbacks.step_log import read_step_log
from latentgen.checkpoint import read_latentgen_checkpoint
from tests.helpers import cli_env, compose_config, resume_reference

ROOT = Path(__file__).resolve().parents[2]
SECRET = "wandb-secret-0123456789abcdef0123456789abcdef"
STEPS = 10
# Test-only: slows each batch down so that a signal can land mid-training.
THROTTLE = ["+callbacks.throttle._target_=tests.helpers.Throttle"]


def _start(args: list[str], tmp: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "train.py", *args],
        cwd=ROOT,
        env=cli_env(tmp, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode not in (0, PREEMPTED_EXIT_CODE, -signal.SIGKILL):
        print(out[-8000:])
    return proc.returncode, out


def _wait_for(proc: subprocess.Popen, ready, timeout: float = 240) -> None:
    end = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(
                f"the run ended (rc={proc.returncode}) before the signal:\n{proc.stdout.read()[-6000:]}"
            )
        if time.time() > end:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.05)


def _logged_batches(run: Path) -> int:
    log = run / "train_steps.jsonl"
    return len(log.read_text().splitlines()) if log.is_file() else 0


def _ckpt_step(path: Path) -> int:
    return int(read_latentgen_checkpoint(path)["global_step"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    overrides, ref = resume_reference(tmp, STEPS)
    return tmp, overrides, ref


@pytest.fixture(scope="module")
def interrupted(setup):
    """kill -9 after the step-3 checkpoint, resume, SIGTERM, resume again to the end."""
    tmp, overrides, _ = setup
    run = tmp / "interrupted"
    args = [*overrides, *THROTTLE, "logger=csv", f"hydra.run.dir={run}"]
    last = run / "checkpoints" / "last.ckpt"

    proc = _start(args, tmp)
    _wait_for(proc, lambda: last.is_file() and _logged_batches(run) >= 5)  # checkpoint of step 3, batch 4 trained
    proc.send_signal(signal.SIGKILL)
    killed_rc, _ = _finish(proc)
    killed_at = _logged_batches(run)

    proc = _start([*args, "ckpt_path=last"], tmp)
    _wait_for(proc, lambda: _logged_batches(run) >= killed_at + 3)
    proc.send_signal(signal.SIGTERM)
    term_rc, term_out = _finish(proc)
    rows_after_term = read_step_log(run / "train_steps.jsonl")
    term_ckpt_step = _ckpt_step(last)

    final_rc, final_out = _finish(_start([*args, "ckpt_path=last"], tmp))
    return dict(
        run=run,
        killed_rc=killed_rc,
        killed_at=killed_at,
        term_rc=term_rc,
        term_out=term_out,
        rows_after_term=rows_after_term,
        term_ckpt_step=term_ckpt_step,
        final_rc=final_rc,
        final_out=final_out,
    )


def test_kill_and_sigterm_then_resume_reproduce_the_uninterrupted_run(setup, interrupted):
    _, _, ref = setup
    run = interrupted["run"]
    assert interrupted["killed_rc"] == -signal.SIGKILL
    assert 5 <= interrupted["killed_at"] < STEPS, "the kill did not land mid-training"
    # SIGTERM: the run stopped at a batch boundary, wrote last.ckpt there and exited with 143.
    assert interrupted["term_rc"] == PREEMPTED_EXIT_CODE, interrupted["term_out"][-3000:]
    stopped_at = max(interrupted["rows_after_term"])
    assert stopped_at < STEPS - 1, "SIGTERM arrived after training had finished"
    assert interrupted["term_ckpt_step"] == interrupted["rows_after_term"][stopped_at]["step"] == stopped_at + 1
    assert interrupted["final_rc"] == 0, interrupted["final_out"][-3000:]
    assert json.loads((run / "metrics.json").read_text())["metrics"]["global_step"] == STEPS

    # The loss curve: every batch, including those trained twice (after the last checkpoint of the
    # killed run), has the uninterrupted run's loss exactly.
    want = read_step_log(ref / "train_steps.jsonl")
    lines = [json.loads(x) for x in (run / "train_steps.jsonl").read_text().splitlines()]
    assert sorted(want) == list(range(STEPS)) and {r["batch"] for r in lines} == set(want)
    assert len(lines) > STEPS  # some batches were trained twice
    for row in lines:
        assert row["train/loss"] == want[row["batch"]]["train/loss"], row
    # The final weights, EMA, optimizer and schedule: identical.
    a = read_latentgen_checkpoint(ref / "checkpoints" / "last.ckpt")
    b = read_latentgen_checkpoint(run / "checkpoints" / "last.ckpt")
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    assert a["lr_schedulers"] == b["lr_schedulers"]
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)


@pytest.fixture(scope="module")
def ddp_run(setup):
    tmp, overrides, _ = setup
    run = tmp / "ddp"
    args = [
        *overrides,
        "trainer=ddp_cpu",
        "logger=wandb",
        "+callbacks.rank_check._target_=latentgen.callbacks.rank_check.RankConsistencyCheck",
        f"hydra.run.dir={run}",
    ]
    rc, out = _finish(_start(args, tmp, WANDB_API_KEY=SECRET), timeout=400)
    return run, rc, out


def test_ddp_two_processes_train_like_one_process_with_the_same_global_batch(setup, ddp_run):
    _, _, ref = setup
    run, rc, out = ddp_run
    assert rc == 0, out[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in out
    a = read_latentgen_checkpoint(ref / "checkpoints" / "last.ckpt")["state_dict"]
    b = read_latentgen_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())
    print(f"DDP vs one process: max weight difference {worst:.3g}")
    # measured 6.2e-6 (Intel Xeon) and 4.6e-6 (AMD EPYC): float32 gradient sums in another order
    assert worst < 2e-5, f"DDP and one process differ by {worst}"
    moved = max((a[k] - b0).abs().max().item() for k, b0 in _initial_denoiser(setup).items())
    assert moved > 100 * max(worst, 1e-9), "the weights hardly moved: the comparison would prove nothing"
    assert "DDP ranks agree" in out  # RankConsistencyCheck: weights, EMA and buffers equal on both ranks
    assert json.loads((run / "metrics.json").read_text())["metrics"]["val/loss_ema"] > 0
    # The logged training loss is the mean over the ranks, so the DDP curve is the one-process curve (rank 0's
    # own half-batch loss differed from it by up to 3e-2).
    want, got = read_step_log(ref / "train_steps.jsonl"), read_step_log(run / "train_steps.jsonl")
    assert sorted(got) == sorted(want) == list(range(STEPS))
    worst_loss = max(abs(got[i]["train/loss"] - want[i]["train/loss"]) for i in want)
    assert worst_loss < 1e-5, f"the logged DDP loss differs from the one-process loss by {worst_loss}"


def _initial_denoiser(setup) -> dict[str, torch.Tensor]:
    """The denoiser's weights before training (the reference run's config, built afresh with its seed)."""
    from latentgen.app.building import build_latent_system
    import lightning as L

    _, overrides, ref = setup
    cfg = compose_config([*overrides, "logger=none"], output_dir=str(ref))
    L.seed_everything(cfg.seed, workers=True)
    system = build_latent_system(cfg, cfg.first_stage.ckpt)
    return {f"denoiser.{k}": v for k, v in system.denoiser.state_dict().items()}


def test_ddp_only_rank_zero_writes_and_no_secret_is_written(ddp_run):
    run, rc, _ = ddp_run
    assert rc == 0
    rows = [json.loads(x) for x in (run / "train_steps.jsonl").read_text().splitlines()]
    assert [r["batch"] for r in rows] == list(range(STEPS))  # one writer
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    leaked = [str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == []
