"""DiT and SiT through the command line: train a few steps on the digits, then sample with evaluate.py."""

from __future__ import annotations

import json

import pytest

from tests.helpers import CLI_TINY as TINY
from tests.helpers import run_cli

FIRST_STAGE = ["first_stage.trainer.max_steps=4", "first_stage.trainer.val_check_interval=4"]
TINY_DIT = ["denoiser=dit_tiny", *FIRST_STAGE]


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ["experiment=dit_digits", "sampler.steps=4", *TINY_DIT],  # DDPM with the learned variance
        ["experiment=sit_digits", "sampler.steps=4", *TINY_DIT],  # SiT: Heun
        ["experiment=sit_digits", "sampler=dopri5", *TINY_DIT],  # adaptive, no step count
        # the published DiT-S/2 (33M) from the plain defaults: unconditional, DDPM on the scaled-linear schedule
        ["denoiser=dit_s", "denoiser.patch_size=2", "sampler.steps=2", *FIRST_STAGE],
    ],
    ids=["dit_digits", "sit_heun", "sit_dopri5", "dit_s_p2"],
)
def test_dit_and_sit_train_and_sample_through_the_cli(tmp_path, args):
    run_dir = tmp_path / "run"
    proc = run_cli(
        ["train.py", *args, "logger=none", "trainer.max_steps=3", "trainer.val_check_interval=3", *TINY]
        + [f"hydra.run.dir={run_dir}"],
        tmp_path,
    )
    assert proc.returncode == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert metrics["global_step"] == 3
    assert (run_dir / "images" / "final.png").is_file()
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "latentgen.networks.DiT" in config

    eval_dir = tmp_path / "eval"
    proc = run_cli(
        ["evaluate.py", f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", "num_samples=4", "batch_size=4"]
        + ["num_grid_samples=4", "logger=none", f"hydra.run.dir={eval_dir}"],
        tmp_path,
    )
    assert proc.returncode == 0
    assert (eval_dir / "samples.png").is_file()
