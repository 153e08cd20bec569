"""Issue 13.10: a resumed run continues its W&B run (same id), a fresh run in the same dir starts a new one,
and evaluate.py logs into the training run's group (offline W&B, in process)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import FAST, TINY_DATA, compose_config

pytest.importorskip("wandb")

RUN = [
    *FAST,
    *TINY_DATA,
    "autoencoder=identity",
    "data=digits",
    "data.resolution=8",
    "denoiser=unet_tiny",
    "sampler.steps=2",
    "logger=wandb",
    "logger.mode=offline",
    "trainer.val_check_interval=2",
    "callbacks.model_checkpoint.every_n_train_steps=2",
]


def _run_ids(run_dir) -> list[str]:
    """The ids of the offline W&B runs under a run dir (``wandb/offline-run-<time>-<id>``), oldest first."""
    return [p.name.rsplit("-", 1)[-1] for p in sorted((run_dir / "wandb").glob("offline-run-*"))]


def test_resume_continues_the_wandb_run_and_evaluate_joins_its_group(tmp_path, monkeypatch):
    from latentgen.app.evaluation import evaluate
    from latentgen.app.training import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    train(compose_config(RUN + ["trainer.max_steps=2"], output_dir=str(run_dir)))
    stored = json.loads((run_dir / "wandb_run.json").read_text())
    train(compose_config(RUN + ["trainer.max_steps=4", "ckpt_path=last"], output_dir=str(run_dir)))
    ids = _run_ids(run_dir)  # (second-resolution timestamps: the sessions are seconds apart)
    assert len(ids) == 2 and set(ids) == {stored["id"]}, ids  # two sessions, one W&B run
    assert stored["group"] == stored["id"]  # no group given: the run is its own group

    eval_dir = tmp_path / "eval"
    evaluate(
        compose_config(
            [
                f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}",
                "logger=wandb",
                "logger.mode=offline",
                "num_samples=4",
                "batch_size=4",
                "perceptual=none",
            ],
            config_name="evaluate",
            output_dir=str(eval_dir),
        )
    )
    evaluation = json.loads((eval_dir / "wandb_run.json").read_text())
    assert evaluation["group"] == stored["group"] and evaluation["id"] != stored["id"]

    train(compose_config(RUN + ["trainer.max_steps=2"], output_dir=str(run_dir)))  # fresh again in the same dir
    fresh = json.loads((run_dir / "wandb_run.json").read_text())["id"]
    assert fresh != stored["id"] and _run_ids(run_dir)[-1] == fresh
