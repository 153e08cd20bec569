"""Sweep jobs: finished jobs are skipped, failures are recorded without stopping the sweep, W&B grouping;
the per-f configs of the study compose and keep the denoiser size equal across f."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import open_dict

from latentgen.files import write_json_rank_zero as write_json
from latentgen.sweep.job import config_differences, job_config_hash, run_sweep_job, sweep_group, sweep_tags
from tests.helpers import compose_config, resolved

LDM_OPTIONS = ["f1", "f2", "f4", "f8", "f16", "f32"]


def _cfg(tmp_path, *extra):
    return compose_config(["experiment=f_sweep", "ldm=f4", *extra], output_dir=str(tmp_path / "job"))


def _fake_train(calls):
    def train(cfg):
        calls.append(1)
        write_json(
            Path(cfg.paths.output_dir) / "metrics.json",
            {"kind": "latent_generative", "metrics": {"val/loss": 0.5}, "config": resolved(cfg)},
        )
        return {"val/loss": 0.5}

    return train


def test_a_finished_job_is_skipped_and_a_changed_one_trains_again(tmp_path):
    calls: list[int] = []
    cfg = _cfg(tmp_path)
    assert run_sweep_job(cfg, _fake_train(calls)) == {"val/loss": 0.5}
    record = json.loads((tmp_path / "job" / "metrics.json").read_text())
    assert record["status"] == "ok" and record["config_hash"] == job_config_hash(_cfg(tmp_path))
    assert record["compute"]["job_wall_time_s"] >= 0
    assert run_sweep_job(_cfg(tmp_path), _fake_train(calls)) == {"val/loss": 0.5}
    assert len(calls) == 1, "the finished job was trained again"
    run_sweep_job(_cfg(tmp_path, "trainer.max_steps=7"), _fake_train(calls))
    assert len(calls) == 2, "a job with another config must train"
    # where the job writes and how it logs are not part of its identity
    assert job_config_hash(_cfg(tmp_path, "logger=csv")) == job_config_hash(_cfg(tmp_path, "logger=none"))


def test_config_differences_ignore_keys_that_one_side_lacks():
    old = {"trainer": {"max_steps": 600}, "callbacks": {"generative_eval": {"num_samples": 200}}}
    assert config_differences(old, {**old, "compile": False}) == []
    new = {"trainer": {"max_steps": 700}, "callbacks": old["callbacks"]}
    assert config_differences(old, new) == ["trainer.max_steps"]


def test_a_failure_is_recorded_and_the_job_returns(tmp_path):
    def broken(cfg):
        raise RuntimeError("out of cheese")

    assert run_sweep_job(_cfg(tmp_path), broken) == {}
    job = tmp_path / "job"
    assert "RuntimeError: out of cheese" in (job / "error.txt").read_text()
    record = json.loads((job / "metrics.json").read_text())
    assert record["status"] == "failed" and "out of cheese" in record["error"]
    # a failed job is not "finished": the next run trains it (and clears error.txt)
    calls: list[int] = []
    run_sweep_job(_cfg(tmp_path), _fake_train(calls))
    assert calls == [1] and not (job / "error.txt").exists()


def test_without_continue_on_error_the_failure_propagates(tmp_path):
    def broken(cfg):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_sweep_job(_cfg(tmp_path, "sweep.continue_on_error=false"), broken)


def test_jobs_of_one_sweep_share_a_group_and_carry_their_group_choices_as_tags(tmp_path, monkeypatch):
    import latentgen.sweep.job as job

    cfg = _cfg(tmp_path, "logger=wandb")
    group = sweep_group(cfg, tmp_path / "multirun" / "2026-01-02" / "03-04-05" / "2")
    assert group == "f_sweep-2026-01-02_03-04-05"
    # what Hydra reports inside a job of `train.py -m experiment=f_sweep ldm=f4 trainer.max_steps=10`
    monkeypatch.setattr(job, "hydra_overrides", lambda: ["experiment=f_sweep", "ldm=f4", "trainer.max_steps=10"])
    monkeypatch.setattr(job, "hydra_choices", lambda: {"experiment": "f_sweep", "ldm": "f4", "objective": "ddpm_eps"})
    assert sweep_tags(cfg) == ["experiment=f_sweep", "f_sweep", "ldm=f4", "objective=ddpm_eps"]
    with open_dict(cfg):
        cfg.sweep.group = "mine"
    assert sweep_group(cfg, tmp_path) == "mine"


def test_every_f_composes_and_the_denoisers_have_about_equal_size(tmp_path):
    counts = {}
    for option in LDM_OPTIONS:
        cfg = compose_config(["experiment=f_sweep", f"ldm={option}"], output_dir=str(tmp_path))
        plain = resolved(cfg)
        f = int(option[1:])
        assert "f" not in plain["sweep"]  # f has one source: the autoencoder (written to metrics.json as "latent")
        assert plain["autoencoder"]["downsample_factor"] == f
        assert plain["denoiser"]["input_size"] == 32 // f
        net = instantiate(cfg.denoiser)
        counts[option] = sum(p.numel() for p in net.parameters())
    median = sorted(counts.values())[len(counts) // 2]
    assert all(abs(c / median - 1) < 0.15 for c in counts.values()), counts


def test_the_cluster_experiment_composes_with_the_paper_sizes(tmp_path):
    cfg = compose_config(
        ["experiment=f_sweep_celebahq", "ldm_celebahq=f8", "data.root=/data/celebahq"], output_dir=str(tmp_path)
    )
    plain = resolved(cfg)
    assert plain["data"]["resolution"] == 256 and plain["autoencoder"]["downsample_factor"] == 8
    assert plain["denoiser"]["input_size"] == 32 and plain["denoiser"]["ch"] == 256
    assert plain["trainer"]["accelerator"] == "gpu"
