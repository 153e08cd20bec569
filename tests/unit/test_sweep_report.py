"""The sweep report on a synthetic multirun dir: job statuses, tables, plots (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentgen.sweep.collect import collect, expected_job_count
from latentgen.sweep.report import write_report


def _history(f: int) -> dict:
    base = 40.0 / f if f > 1 else 300.0
    evals = [
        {
            "step": s,
            "kind": "milestone",
            "sampling_steps": 10,
            "nfe": 10,
            "num_samples": 50,
            "num_reference": 50,
            "sampling_images_per_s": 100.0 * f,
            "wall_time_s": s / 10,
            "eval_time_s": 1.0,
            "extractor": "clf",
            "metrics": {"fid": base * 100 / s, "precision": 0.5, "recall": 0.4, "density": 0.9, "coverage": 0.6},
        }
        for s in (100, 200)
    ]
    finals = [
        {
            "step": 200,
            "kind": "final",
            "sampling_steps": n,
            "nfe": n,
            "num_samples": 50,
            "num_reference": 50,
            "sampling_images_per_s": 1000.0 * f / n,
            "wall_time_s": 30.0,
            "eval_time_s": 1.0,
            "extractor": "clf",
            "metrics": {"fid": base / n**0.5, "precision": 0.5, "recall": 0.4, "density": 0.9, "coverage": 0.6},
        }
        for n in (10, 20)
    ]
    rec = {
        "psnr_mean": 100.0 if f == 1 else 30.0 - f,
        "ssim_mean": 1.0 - f / 100,
        "lpips_mean": f / 100,
        "rfid": 0.0 if f == 1 else float(f),
    }
    return {"evals": evals, "final": finals, "reconstruction": {"metrics": rec, "eval_time_s": 1.0}}


def _job(root: Path, num: int, f: int, status: str | None) -> Path:
    d = root / str(num)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(f"- ldm=f{f}\n- experiment=f_sweep\n")
    (d / ".hydra" / "hydra.yaml").write_text(
        f"hydra:\n  runtime:\n    choices:\n      objective: ddpm_eps\n      ldm: f{f}\n      experiment: f_sweep\n"
    )
    # f comes from the run's latent contract (written from its autoencoder), never from the config
    config = {"data": {"resolution": 32}, "logger": {"group": "f_sweep-test"}}
    if status == "ok":
        (d / "eval_history.json").write_text(json.dumps(_history(f)))
        compute = {
            "latent_shape": [3, 32 // f, 32 // f],
            "params_denoiser": 2_000_000,
            "flops_per_image": 1e8 * 32 / f,
            "flops_per_step": 1e9,
            "train_images_per_s": 10.0 * f,
            "global_batch_size": 8,
            "job_wall_time_s": 60.0,
            "peak_cpu_rss_mb": 1000.0,
            "peak_accelerator_memory_mb": None,
        }
        (d / "metrics.json").write_text(
            json.dumps(
                {
                    "status": "ok",
                    "config": config,
                    "metrics": {"global_step": 200},
                    "compute": compute,
                    "job": {"job_num": num},
                    "latent": {"downsample_factor": f, "latent_channels": 3, "latent_shape": [3, 32 // f, 32 // f]},
                }
            )
        )
    elif status == "failed":
        error = "ConfigError: denoiser.ch_mult is empty"
        (d / "error.txt").write_text(f"Traceback (most recent call last):\n  ...\n{error}\n")
        (d / "metrics.json").write_text(json.dumps({"status": "failed", "error": error, "job": {"job_num": num}}))
    return d


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "multirun" / "2026-01-01" / "12-00-00"
    _job(root, 0, 1, "ok")
    _job(root, 1, 4, "ok")
    _job(root, 2, 8, "failed")
    _job(root, 3, 16, None)  # running or killed: no metrics.json
    (root / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task:\n    - experiment=f_sweep\n    - ldm=f1,f4,f8,f16,f32\n"
        "  sweeper:\n    params: {}\n"
    )
    return root


def test_collect_names_every_job_status(sweep):
    jobs = collect(sweep)
    assert expected_job_count(sweep) == 5
    assert [(j.num, j.f, j.status) for j in jobs] == [
        (0, 1, "ok"),
        (1, 4, "ok"),
        (2, None, "failed"),
        (3, None, "unfinished"),
        (4, None, "not started"),
    ]
    # jobs that wrote no latent contract are named by the group choices of their overrides
    assert [j.label for j in jobs] == [
        "f=1",
        "f=4",
        "ldm=f8, experiment=f_sweep",
        "ldm=f16, experiment=f_sweep",
        "job 4",
    ]
    assert "ch_mult is empty" in jobs[2].error
    assert jobs[1].latent_shape == "8x8x3"


def test_report_writes_tables_and_plots_for_a_partial_sweep(sweep, tmp_path):
    out = tmp_path / "report"
    write_report(sweep, out)
    md = (out / "report.md").read_text()
    assert "2 ok, 1 failed, 1 unfinished, 1 not started" in md
    assert "ch_mult is empty" in md and "no metrics.json yet" in md
    for section in ("First stage", "FID during training", "Final EMA model vs sampling steps", "Compute"):
        assert section in md, section
    assert "| f=4 | ddpm_eps | 8x8x3 |" in md
    assert "exact" in md  # f=1: identity first stage
    for name in ("fid_vs_step", "fid_vs_throughput", "reconstruction_vs_f", "precision_recall_vs_step"):
        assert (out / f"{name}.png").stat().st_size > 5000, name
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [r["f"] for r in rows] == [1, 4]
    assert rows[1]["fid@10"] == pytest.approx(10.0 / 10**0.5)


def test_report_cli_on_a_missing_dir_is_a_clear_error(tmp_path, capsys):
    from latentgen.sweep.__main__ import main

    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_report_is_logged_to_wandb_offline(sweep, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "report"
    result = write_report(sweep, out, wandb=True)
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and result["wandb_dir"]
    assert list(runs[0].glob("*.wandb")), "the offline run has no data file"
    media = list(runs[0].rglob("*.png"))
    assert len(media) >= 3, media  # the plots went in as images (the table as a table file)
    assert list(runs[0].rglob("*summary*.table.json"))


def test_a_pretrained_first_stage_is_its_own_row_labelled_pretrained(sweep, tmp_path):
    """A job on a pretrained first stage (autoencoder=diffusers) writes ``pretrained`` into its latent contract;
    the report shows it as one more row, labelled, beside the trained f=4 row."""
    job = _job(sweep, 5, 4, "ok")
    record = json.loads((job / "metrics.json").read_text())
    record["latent"]["pretrained"] = "sd-vae-ft-ema"
    (job / "metrics.json").write_text(json.dumps(record))
    jobs = {j.num: j for j in collect(sweep)}
    assert jobs[1].label == "f=4" and jobs[1].pretrained is None
    assert jobs[5].label == "f=4 pretrained (sd-vae-ft-ema)"
    out = tmp_path / "report"
    write_report(sweep, out)
    assert "| f=4 pretrained (sd-vae-ft-ema) | ddpm_eps | 8x8x3 |" in (out / "report.md").read_text()
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [(r["f"], r["pretrained"]) for r in rows] == [(1, None), (4, None), (4, "sd-vae-ft-ema")]
