"""The third training stage: a few-step student of a trained latent model.

``python train.py model=reflow teacher.ckpt=<latent model ckpt>`` (rectified-flow teachers) and
``python train.py model=distill teacher.ckpt=<ckpt> distill=progressive`` (diffusion teachers, or any teacher
DDIM can step) run it:

1. **teacher**: the latent-model checkpoint is rebuilt from its own config (allow-list checked) and frozen; its
   EMA weights, guided at ``teacher.guidance_scale`` (null: the teacher's own scale), are what the student learns;
2. **student**: the teacher's model config with the student system and its options (``model=``, ``distill=``),
   the teacher's first stage, conditioner and data; its trained parts and their EMA start from the teacher's
   EMA; it samples with guidance scale 1 (it has learned the guided teacher);
3. **data**: reflow generates (noise, teacher ODE sample) pairs once into a cache keyed by the teacher's weights,
   the solver, its steps and the count (:mod:`latentgen.data.reflow_pairs`), sharded over the DDP ranks;
   progressive distillation trains on the teacher's data (latents cached as for the teacher);
4. **training**: as any latent model; ``last.ckpt`` is a latent-model checkpoint that ``evaluate.py`` samples
   with any sampler at any step count, and ``metrics.json`` records the stage's cost (pair generation and
   training wall time).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict

from latentgen.app.building import build_trainer, load_system_from_checkpoint, scalar_metrics, system_options
from latentgen.config import instantiate
from latentgen.data.reflow_pairs import (
    ReflowPairs,
    key_digest,
    load_or_generate_pairs,
    pair_cache_key,
    process_rank,
)
from latentgen.errors import ConfigError
from latentgen.systems.latent_generative import LatentGenerativeSystem
from latentgen.systems.student import StudentSystem
from latentgen.systems.teacher import Teacher

log = logging.getLogger("latentgen")

# Nodes a student takes from its teacher's run config (what its weights and its data are).
TEACHER_NODES = ("autoencoder", "data", "denoiser", "objective", "schedule", "conditioner", "sampler")
# Keys of ``distill=`` that are options of the student system (the rest configure the stage).
SYSTEM_KEYS = {"reflow": ("one_step",), "progressive": ("student_steps", "spacing")}


def is_student_run(cfg: DictConfig) -> bool:
    """Whether ``model=`` names a few-step student (this stage) rather than a first stage or a latent model."""
    target = OmegaConf.select(cfg, "model._target_")
    return target is not None and issubclass(get_class(target), StudentSystem)


def train_student(cfg: DictConfig, output_dir: Path) -> dict[str, float]:
    # The shared steps of a training run live in the training root, which dispatches here.
    from latentgen.app.training import attach_latent_cache, build_run_logger, fit, resolve_resume_path
    from latentgen.app.training import write_run_record

    method = check_method(cfg)
    teacher_system, teacher_cfg = load_teacher(cfg)
    scale = cfg.teacher.get("guidance_scale")
    teacher = Teacher(teacher_system, teacher_cfg.guidance.scale if scale is None else float(scale))
    run_cfg = student_run_config(cfg, teacher_cfg, method)
    student: StudentSystem = instantiate(
        run_cfg.model, first_stage=copy.deepcopy(teacher_system.first_stage), **system_options(run_cfg, latent=True)
    )
    student.attach_teacher(teacher)
    datamodule = instantiate(run_cfg.data)
    start = time.time()
    pairs_info: dict[str, Any] = {}
    if method == "reflow":
        pairs_info = attach_reflow_pairs(run_cfg, teacher, datamodule)
    elif datamodule.cache_latents:
        attach_latent_cache(run_cfg, student, datamodule)
    generation_s = time.time() - start
    resume_from = resolve_resume_path(run_cfg, output_dir / "checkpoints")
    logger = build_run_logger(run_cfg, output_dir, resuming=resume_from is not None)
    trainer = build_trainer(run_cfg, trainer_cfg=run_cfg.trainer, logger=logger)
    start = time.time()
    fit(trainer, student, datamodule, resume_from)
    wall = time.time() - start
    metrics = scalar_metrics(trainer.validate(student, datamodule=datamodule, verbose=False)[0])
    metrics.update(
        train_wall_time_s=wall,
        pair_generation_wall_time_s=generation_s,
        global_step=trainer.global_step,
        teacher_guidance_scale=teacher.guidance_scale,
    )
    trainer.save_checkpoint(output_dir / "checkpoints" / "last.ckpt", weights_only=False)
    write_run_record(output_dir, student.kind, {**metrics, **pairs_info}, run_cfg, student.first_stage)
    return metrics


def check_method(cfg: DictConfig) -> str:
    distill = cfg.get("distill")
    method = None if distill is None else distill.get("method")
    if method == "consistency":
        raise ConfigError(
            "distill=consistency (consistency distillation, Song et al. 2023) is not built yet; use "
            "distill=progressive for diffusion teachers or model=reflow for rectified-flow teachers"
        )
    if method not in SYSTEM_KEYS:
        raise ConfigError(f"distill.method={method!r}: choose model=reflow, or model=distill distill=progressive")
    if not cfg.get("teacher") or not cfg.teacher.get("ckpt"):
        raise ConfigError("a few-step student needs its teacher: teacher.ckpt=<a latent-model last.ckpt>")
    return str(method)


def load_teacher(cfg: DictConfig) -> tuple[LatentGenerativeSystem, DictConfig]:
    system, stored = load_system_from_checkpoint(cfg.teacher.ckpt)
    if not isinstance(system, LatentGenerativeSystem):
        raise ConfigError(f"teacher.ckpt='{cfg.teacher.ckpt}' is a {type(system).__name__}, not a latent model")
    return system, stored


def student_run_config(cfg: DictConfig, teacher_cfg: DictConfig, method: str) -> DictConfig:
    """This run's config with the teacher's model, first stage and data, and the student system in ``model``."""
    run_cfg = cfg.copy()
    with open_dict(run_cfg):
        for node in TEACHER_NODES:
            if node in teacher_cfg:
                run_cfg[node] = teacher_cfg[node]
        model = OmegaConf.merge(teacher_cfg.model, cfg.model)
        for key in SYSTEM_KEYS[method]:
            if key in cfg.distill:
                model[key] = cfg.distill[key]
        model.guidance_scale = 1.0  # the student has learned the guided teacher: one pass per step
        if method == "progressive" and "steps" in model.sampler:
            model.sampler.steps = int(cfg.distill.student_steps)
        run_cfg.model = model
        run_cfg.guidance.scale = 1.0
        run_cfg.first_stage.ckpt = teacher_cfg.first_stage.get("ckpt")
        if cfg.distill.get("batch_size"):
            run_cfg.data.batch_size = int(cfg.distill.batch_size)
    return run_cfg


def attach_reflow_pairs(run_cfg: DictConfig, teacher: Teacher, datamodule) -> dict[str, Any]:
    """Generate (or load) the teacher's pairs and make them the data: the last ``distill.val_pairs`` are the
    validation split. Returns what the run record notes about them."""
    opts = run_cfg.distill
    solver = instantiate(opts.solver) if opts.get("solver") is not None else teacher.system.sampler
    steps = opts.get("solver_steps")
    conditioner = teacher.system.conditioner
    num_classes = getattr(conditioner, "num_classes", None) if conditioner.is_conditional else None
    if conditioner.is_conditional and num_classes is None:
        raise ConfigError(
            f"model=reflow draws the teacher's conditions as class labels; {type(conditioner).__name__} is not "
            "a class conditioner"
        )
    shape = teacher.system.latent_shape
    key = pair_cache_key(
        teacher_digest=teacher.digest(),
        solver=repr(solver),
        steps=None if steps is None else int(steps),
        guidance_scale=teacher.guidance_scale,
        count=int(opts.num_pairs),
        seed=int(run_cfg.seed),
        latent_shape=tuple(shape),
        num_classes=None if num_classes is None else int(num_classes),
        chunk_size=int(opts.chunk_size),
    )
    folder = Path(opts.pairs) if opts.get("pairs") else Path(run_cfg.paths.cache_dir) / "reflow_pairs" / key_digest(key)

    def generate(noise, labels):
        batch = {"label": labels} if labels is not None else {"noise": noise}
        return teacher.solve(noise, batch, solver, None if steps is None else int(steps))

    rank, world = process_rank()
    teacher.to(generation_device(run_cfg))
    pairs = load_or_generate_pairs(folder, key, generate, rank=rank, world_size=world)
    n_val = int(opts.val_pairs)
    if not 0 < n_val < len(pairs["noise"]):
        raise ConfigError(f"distill.val_pairs={n_val} must be in (0, distill.num_pairs={len(pairs['noise'])})")
    n = len(pairs["noise"])
    datamodule.setup("fit")
    datamodule.use_train_dataset(ReflowPairs(pairs, range(0, n - n_val)))
    datamodule.val_dataset = ReflowPairs(pairs, range(n - n_val, n))
    log.info("reflow: %d pairs in %s (%d for validation)", n, folder, n_val)
    return {"pairs_dir": str(folder), "pairs_key": key, "pairs": n}


def generation_device(run_cfg: DictConfig) -> torch.device:
    """Where this rank's teacher generates pairs: its accelerator when the trainer uses one, else the CPU."""
    accelerator = str(run_cfg.trainer.get("accelerator", "cpu"))
    if accelerator != "cpu" and torch.accelerator.is_available():  # whichever accelerator torch sees, never a name
        kind = torch.accelerator.current_accelerator()
        return torch.device(kind.type, int(os.environ.get("LOCAL_RANK", "0") or 0))
    return torch.device("cpu")
