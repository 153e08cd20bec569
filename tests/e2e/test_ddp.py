"""2-process DDP (gloo) through the real CLI: the two-stage run and the global batch check.

(DDP against one process, and rank-0-only writing, are in test_resume.py, which runs by default.)
"""

from __future__ import annotations

import json
import re

import pytest

from tests.helpers import CLI_TINY as TINY
from tests.helpers import run_cli

pytestmark = pytest.mark.slow  # each starts two Python processes with the full stack (30-70 s)


def test_two_stage_run_under_ddp_launches_once_and_agrees_across_ranks(tmp_path):
    """Autoencoder with the GAN active (manual optimization, two optimizers: find_unused_parameters),
    then the latent model, in one `trainer=ddp_cpu` run: one child process for both stages, the latent
    scale all-reduced (both ranks log the same value), both ranks' weights/EMA/buffers equal."""
    run = tmp_path / "run"
    proc = run_cli(
        [
            "train.py",
            "trainer=ddp_cpu",
            "data=shapes",
            "data.dataset.num_train=64",
            "data.dataset.num_val=8",
            "autoencoder=kl_f4_tiny",
            "denoiser=unet_tiny",
            "sampler.steps=2",
            "discriminator.norm=group",
            "ae_loss.disc_start=1",
            "ae_loss.disc_train_start=0",
            "first_stage.trainer.max_steps=3",
            "first_stage.trainer.val_check_interval=3",
            "first_stage.latent_stats_batches=2",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
            "logger=csv",
            *TINY,
            "+callbacks.rank_check._target_=latentgen.callbacks.rank_check.RankConsistencyCheck",
            f"hydra.run.dir={run}",
        ],
        tmp_path,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert len(re.findall(r"INFO: Initializing distributed: GLOBAL_RANK: 1", out)) == 1  # launched once
    scales = re.findall(r"latent scale ([0-9.]+)", out)
    assert len(scales) == 2 and scales[0] == scales[1]  # rank 0 and rank 1
    assert out.count("DDP ranks agree") == 2  # autoencoder stage and latent stage
    assert json.loads((run / "metrics.json").read_text())["metrics"]["global_step"] == 3
    cache = tmp_path / ".cache" / "latentgen" / "first_stage"
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1  # one first stage (beside it: its lock file)


def test_a_global_batch_that_does_not_split_over_the_ranks_is_a_clear_error(tmp_path):
    proc = run_cli(
        [
            "train.py",
            "model=autoencoder",
            "autoencoder=kl_f4_tiny",
            "data=shapes",
            "trainer=ddp_cpu",
            "trainer.max_steps=1",
            *[o for o in TINY if not o.startswith("data.batch_size")],
            "data.batch_size=7",
            "logger=none",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        tmp_path,
        timeout=300,
    )
    assert proc.returncode != 0
    assert (
        "data.batch_size=7 is the global batch size and must be divisible by the world size 2"
        in proc.stderr + proc.stdout
    )
