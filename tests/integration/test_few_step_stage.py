"""The third stage end to end, in process: a tiny teacher, then its reflow and progressive students."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from latentgen.app.building import load_system_from_checkpoint
from latentgen.app.training import train
from latentgen.errors import ConfigError, DataError
from latentgen.systems.reflow import ReflowSystem
from tests.helpers import FAST, TINY_DATA, TINY_LDM, compose_config, make_first_stage_export

pytestmark = pytest.mark.slow

STUDENT = [*FAST, "trainer.max_steps=3", "trainer.val_check_interval=3", "sample_every_n_steps=1000"]
REFLOW = ["distill.num_pairs=24", "distill.val_pairs=8", "distill.chunk_size=8", "distill.solver_steps=2"]


@pytest.fixture(scope="module")
def rf_teacher(tmp_path_factory):
    """A class-conditional rectified-flow latent model (4 steps) on a tiny untrained first stage."""
    out = tmp_path_factory.mktemp("rf_teacher")
    base = [*TINY_DATA, "autoencoder=kl_f4_tiny", "data=digits"]
    fs = make_first_stage_export(out / "fs", base)
    cfg = compose_config(
        [
            *FAST,
            *base,
            *TINY_LDM,
            "objective=rectified_flow",
            "sampler=euler",
            "conditioner=class",
            "guidance.scale=2.0",
            "trainer.max_steps=4",
            "trainer.val_check_interval=4",
            "sample_every_n_steps=1000",
            f"first_stage.ckpt={fs}",
        ],
        output_dir=str(out),
    )
    train(cfg)
    return out / "checkpoints" / "last.ckpt"


def test_reflow_student_trains_on_cached_pairs_and_samples_in_one_step(rf_teacher, tmp_path):
    cfg = compose_config(
        ["model=reflow", f"teacher.ckpt={rf_teacher}", *STUDENT, *REFLOW], output_dir=str(tmp_path / "a")
    )
    with_cache = str(tmp_path / "cache")
    cfg.paths.cache_dir = with_cache
    train(cfg)
    record = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert record["kind"] == "reflow" and record["metrics"]["pairs"] == 24
    folder = record["metrics"]["pairs_dir"]
    assert record["metrics"]["pairs_key"]["guidance_scale"] == 2.0  # the student learns the guided teacher
    student, stored = load_system_from_checkpoint(tmp_path / "a" / "checkpoints" / "last.ckpt")
    assert isinstance(student, ReflowSystem) and student.guidance_scale == 1.0
    assert stored.first_stage.ckpt  # the teacher's first stage
    teacher, _ = load_system_from_checkpoint(rf_teacher)
    torch.testing.assert_close(student.first_stage.state_dict(), teacher.first_stage.state_dict())
    for steps in (1, 2):
        images = student.sample({"label": torch.arange(3)}, steps=steps, generator=torch.Generator().manual_seed(0))
        assert images.shape == (3, 1, 16, 16) and torch.isfinite(images).all()

    # A second run reuses the pairs: the chunk files are not rewritten.
    stamps = {p.name: p.stat().st_mtime_ns for p in sorted(Path(folder).glob("chunk-*.pt"))}
    cfg_b = compose_config(
        ["model=reflow", f"teacher.ckpt={rf_teacher}", *STUDENT, *REFLOW], output_dir=str(tmp_path / "b")
    )
    cfg_b.paths.cache_dir = with_cache
    train(cfg_b)
    again = {p.name: p.stat().st_mtime_ns for p in sorted(Path(folder).glob("chunk-*.pt"))}
    assert again == stamps and len(stamps) == 3

    # The same folder for another solver step count is refused with the differing entry named.
    cfg_c = compose_config(
        [
            "model=reflow",
            f"teacher.ckpt={rf_teacher}",
            *STUDENT,
            *REFLOW,
            "distill.solver_steps=3",
            f"distill.pairs={folder}",
        ],
        output_dir=str(tmp_path / "c"),
    )
    with pytest.raises(DataError, match="steps: cache 2 vs now 3"):
        train(cfg_c)


def test_the_student_starts_from_the_teachers_ema(rf_teacher, tmp_path):
    from latentgen.app.few_step import load_teacher, student_run_config
    from latentgen.app.building import system_options
    from latentgen.config import instantiate
    from latentgen.systems.teacher import Teacher

    cfg = compose_config(["model=reflow", f"teacher.ckpt={rf_teacher}", *STUDENT], output_dir=str(tmp_path))
    system, teacher_cfg = load_teacher(cfg)
    run_cfg = student_run_config(cfg, teacher_cfg, "reflow")
    student = instantiate(run_cfg.model, first_stage=system.first_stage, **system_options(run_cfg, latent=True))
    student.attach_teacher(Teacher(system, 2.0))
    for name, p in student.trainable.state_dict().items():
        torch.testing.assert_close(p, system.ema.shadow.state_dict()[name])
    assert "_teacher" not in dict(student.named_children()) and not any(
        k.startswith("_teacher") for k in student.state_dict()
    )


def test_progressive_student_of_a_diffusion_teacher(trained_ldm, tmp_path):
    _, out, _, _ = trained_ldm
    teacher_ckpt = out / "checkpoints" / "last.ckpt"
    cfg = compose_config(
        ["model=distill", "distill=progressive", "distill.student_steps=2", f"teacher.ckpt={teacher_ckpt}", *STUDENT],
        output_dir=str(tmp_path),
    )
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["val/loss"]))
    student, stored = load_system_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert stored.model.sampler.steps == 2 and student.guidance_scale == 1.0
    images = student.sample({"label": torch.arange(2)}, generator=torch.Generator().manual_seed(0))
    assert images.shape[0] == 2 and torch.isfinite(images).all()


def test_consistency_distillation_is_refused_clearly(trained_ldm, tmp_path):
    _, out, _, _ = trained_ldm
    cfg = compose_config(
        ["model=distill", "distill=consistency", f"teacher.ckpt={out / 'checkpoints' / 'last.ckpt'}", *STUDENT],
        output_dir=str(tmp_path),
    )
    with pytest.raises(ConfigError, match="consistency .* not built yet"):
        train(cfg)


def test_reflow_refuses_a_diffusion_teacher(trained_ldm, tmp_path):
    _, out, _, _ = trained_ldm
    cfg = compose_config(
        ["model=reflow", f"teacher.ckpt={out / 'checkpoints' / 'last.ckpt'}", *STUDENT, *REFLOW],
        output_dir=str(tmp_path),
    )
    with pytest.raises(ConfigError, match="rectified-flow teacher"):
        train(cfg)
