"""Issue 13.9: two concurrent jobs (a joblib sweep) that need the same first stage train it once. The first
takes the lock on its cache dir and trains; the second waits and reuses the finished export."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

from tests.helpers import FAST, TINY_AE, TINY_DATA, TINY_LDM, compose_config

OVERRIDES = FAST + TINY_DATA + TINY_AE + TINY_LDM + ["first_stage.ckpt=null"]


def _job(out_dir: str, log_file: str, start: float) -> None:
    """One sweep job's stage 1, in its own process; the training is replaced by a slow fake that writes
    what a finished first stage leaves behind."""
    from latentgen.app import training

    def fake_train_first_stage(run_cfg, out):
        with open(log_file, "a") as f:
            f.write(f"{os.getpid()} start {time.time() - start:.3f}\n")
        time.sleep(1.5)  # long enough for the other job to arrive while this one trains
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        (out / "checkpoints" / "autoencoder.safetensors").write_bytes(b"export")
        (out / "metrics.json").write_text(json.dumps({"kind": "autoencoder"}))
        with open(log_file, "a") as f:
            f.write(f"{os.getpid()} end {time.time() - start:.3f}\n")

    training.train_first_stage = fake_train_first_stage
    cfg = compose_config(OVERRIDES, output_dir=out_dir)
    export = training.first_stage_for(cfg)
    with open(log_file, "a") as f:
        f.write(f"{os.getpid()} got {export}\n")


def test_two_jobs_needing_one_first_stage_train_it_once(tmp_path):
    log_file = tmp_path / "log.txt"
    ctx = mp.get_context("fork")
    start = time.time()
    jobs = [ctx.Process(target=_job, args=(str(tmp_path), str(log_file), start)) for _ in range(2)]
    for p in jobs:
        p.start()
    for p in jobs:
        p.join(timeout=120)
    assert [p.exitcode for p in jobs] == [0, 0], log_file.read_text() if log_file.exists() else "no log"
    lines = log_file.read_text().splitlines()
    starts = [ln for ln in lines if " start " in ln]
    got = {ln.split(" got ")[1] for ln in lines if " got " in ln}
    assert len(starts) == 1, lines  # trained once
    assert len(got) == 1 and Path(got.pop()).read_bytes() == b"export"  # both jobs use the same export
    assert sum(" got " in ln for ln in lines) == 2
