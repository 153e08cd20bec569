"""evaluate: rebuild from the checkpoint's config, swap the sampler, write metrics.json."""

from __future__ import annotations

import json

import pytest

from latentgen.data import DigitsDataset
from latentgen.errors import CheckpointError
from latentgen.app.evaluation import evaluate as run_evaluation
from latentgen.metrics.dataset_classifier import save_dataset_classifier, train_dataset_classifier
from tests.helpers import compose_config


@pytest.fixture(scope="module")
def digits_classifier(tmp_path_factory):
    """A dataset-classifier feature extractor trained briefly on 16 px digits, saved and loaded by path."""
    ds = DigitsDataset(resolution=16, channels=1, split="train")
    extractor, _ = train_dataset_classifier(ds, epochs=1, max_samples=300, resolution=16, num_classes=10)
    path, _ = save_dataset_classifier(extractor, tmp_path_factory.mktemp("clf") / "digits16.safetensors")
    return path


def _eval_cfg(tmp_path, ckpt, *extra):
    return compose_config(
        [f"ckpt={ckpt}", "logger=none", "num_samples=24", "batch_size=8", *extra],
        config_name="evaluate",
        output_dir=str(tmp_path),
    )


def test_evaluate_latent_model_with_swapped_sampler(trained_ldm, digits_classifier, tmp_path):
    _, out, _, _ = trained_ldm
    cfg = _eval_cfg(
        tmp_path,
        out / "checkpoints" / "last.ckpt",
        "sampler=euler",
        "sampler.steps=3",
        "extractor=dataset_classifier",
        f"extractor.weights_path={digits_classifier}",
        "metrics=[fid,kid,prc,density_coverage]",
        "guidance.scale=1.5",
    )
    record = run_evaluation(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["sampler"].endswith("EulerSampler") and saved["steps"] == 3 and saved["nfe"] == 3
    assert saved["guidance_scale"] == 1.5
    assert saved["num_samples"] == 24 and saved["extractor"]["name"]
    for key in ("fid", "kid_mean", "precision", "recall", "density", "coverage"):
        assert key in saved["metrics"], key
    assert saved["metrics"]["fid"] > 0
    assert (tmp_path / "samples.png").is_file()
    assert record["metrics"]["fid"] == saved["metrics"]["fid"]
    # Wall time per phase sits beside the metrics (not among them), and the sampling speed counts the
    # sampler alone: feature extraction of the samples is its own phase.
    phases = saved["seconds"]
    assert set(phases) == {"reference", "sampling", "fake_features", "metrics"}
    assert all(v >= 0 for v in phases.values()) and phases["sampling"] > 0
    assert not any(k.startswith("seconds") for k in saved["metrics"])
    assert saved["metrics"]["sampling_images_per_s"] == pytest.approx(24 / phases["sampling"], rel=1e-6)


def test_evaluate_autoencoder_reports_reconstruction_metrics(trained_ldm, tmp_path):
    cfg, _, _, _ = trained_ldm
    ae_run = cfg.first_stage.ckpt.replace("autoencoder.safetensors", "last.ckpt")
    record = run_evaluation(_eval_cfg(tmp_path, ae_run))
    m = record["metrics"]
    assert record["kind"] == "autoencoder"
    assert m["psnr_mean"] > 5 and 0 < m["ssim_mean"] <= 1 and m["num_samples"] == 24


def test_evaluate_autoencoder_reports_lpips_though_it_was_trained_without_a_perceptual_loss(tmp_path):
    """Issue 13.6: evaluation chooses its own perceptual network (conf/evaluate.yaml: perceptual=stlpips,
    offline) and names it; the CPU recipes train their first stages with perceptual=none."""
    from latentgen.app.training import train
    from tests.helpers import FAST, TINY_AE

    run_dir = tmp_path / "ae"
    train(
        compose_config(
            [
                *FAST,
                *TINY_AE,
                "model=autoencoder",
                "data=digits",
                "data.resolution=32",
                "data.batch_size=4",
                "trainer.max_steps=2",
                "trainer.limit_val_batches=1",
                "num_grid_samples=4",
                "first_stage.latent_stats_batches=1",
            ],
            output_dir=str(run_dir),
        )
    )
    trained_with = json.loads((run_dir / "metrics.json").read_text())["config"]["perceptual"]["_target_"]
    assert trained_with.endswith("NoPerceptual")
    record = run_evaluation(_eval_cfg(tmp_path / "eval", run_dir / "checkpoints" / "last.ckpt", "num_samples=8"))
    assert record["lpips_network"] != "none" and 0 <= record["metrics"]["lpips_mean"] < 1


def test_a_file_that_is_not_a_latentgen_checkpoint_is_refused(tmp_path):
    import torch

    bogus = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, bogus)
    with pytest.raises(CheckpointError, match="not a latentgen checkpoint"):
        run_evaluation(_eval_cfg(tmp_path, bogus))


def test_torchrun_with_two_processes_shares_the_sampling_and_equals_one_process(
    trained_ldm, digits_classifier, tmp_path
):
    """`torchrun --nproc_per_node=2 evaluate.py ...` (gloo on the CPU): each rank samples half of the
    batches, rank 0 writes metrics.json, and the numbers equal a one-process evaluation's."""
    import subprocess
    import sys

    from tests.helpers import ROOT, cli_env

    _, out, _, _ = trained_ldm
    args = [f"ckpt={out / 'checkpoints' / 'last.ckpt'}", "logger=none", "num_samples=24", "batch_size=8",
            "sampler=euler", "sampler.steps=2", "extractor=dataset_classifier",
            f"extractor.weights_path={digits_classifier}", "metrics=[fid,prc,density_coverage]"]  # fmt: skip
    run_dir, logs = tmp_path / "torchrun", tmp_path / "torchrun_logs"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         f"--log-dir={logs}", "--redirects=3", "evaluate.py", *args, f"hydra.run.dir={run_dir}"],
        cwd=ROOT, env=cli_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    # Each rank's own output is in its log file: the rank that failed first is rarely the last one to print.
    rank_logs = "".join(f"\n--- {p.relative_to(logs)}\n{p.read_text()[-3000:]}" for p in sorted(logs.rglob("std*.log")))
    assert proc.returncode == 0, rank_logs + "\n--- torchrun\n" + (proc.stdout + proc.stderr)[-2000:]
    two = json.loads((run_dir / "metrics.json").read_text())
    assert two["world_size"] == 2 and two["num_samples"] == 24 and two["metrics"]["num_fake"] == 24
    one = run_evaluation(compose_config([*args, f"paths.cache_dir={tmp_path / 'cache'}"], config_name="evaluate",
                                        output_dir=str(tmp_path / "one")))  # fmt: skip
    for key in ("fid", "precision", "recall", "density", "coverage"):
        assert two["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-5, abs=1e-9), key
