"""The real command line, in subprocesses: train.py / evaluate.py as a user runs them."""

from __future__ import annotations

import json

from tests.helpers import CLI_TINY as TINY
from tests.helpers import run_cli


def test_help_lists_config_groups(tmp_path):
    proc = run_cli(["train.py", "--help"], tmp_path)
    assert proc.returncode == 0
    for group in ["autoencoder", "data", "denoiser", "objective", "sampler", "conditioner", "trainer", "logger"]:
        assert f"{group}:" in proc.stdout, group
    assert "kl_f8" in proc.stdout and "rectified_flow" in proc.stdout


def test_train_autoencoder_cli_writes_the_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        [
            "train.py",
            "model=autoencoder",
            "autoencoder=vq_f4_tiny",
            "data=shapes",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
            *TINY,
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
    )
    assert proc.returncode == 0
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "images" / "final.png").is_file()
    assert list((run_dir / "wandb").glob("offline-run-*")), "the W&B offline run is missing"
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert metrics["global_step"] == 3 and metrics["val/psnr"] > 0


def test_multirun_gives_each_job_its_own_dir(tmp_path):
    proc = run_cli(
        [
            "train.py",
            "-m",
            "model=autoencoder",
            "autoencoder=kl_f4_tiny,vq_f4_tiny",
            "data=digits",
            "logger=csv",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            *TINY,
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        tmp_path,
    )
    assert proc.returncode == 0
    jobs = sorted((tmp_path / "sweep").glob("[0-9]*"))
    assert [j.name for j in jobs] == ["0", "1"]
    for job in jobs:
        assert (job / "metrics.json").is_file() and (job / "checkpoints" / "last.ckpt").is_file()


def test_wrong_config_key_is_a_clear_error(tmp_path):
    proc = run_cli(["train.py", "data.resolutoin=32"], tmp_path)
    assert proc.returncode != 0
    assert "resolutoin" in proc.stderr
