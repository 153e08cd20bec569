"""Read the jobs of a multirun dir (``<sweep dir>/<job num>/``): status, config, metrics, eval history.

A job dir is one with a ``.hydra/`` folder (Hydra writes it when the job starts). Its status:

- ``ok``: ``metrics.json`` with ``status: ok`` (or a plain latentgen ``metrics.json`` without a status);
- ``failed``: ``metrics.json`` with ``status: failed``, or an ``error.txt`` (the traceback);
- ``unfinished``: no ``metrics.json`` yet (still running, or killed);
- ``not started``: a job number the sweep's ``multirun.yaml`` implies but that has no dir.

Only the standard library and PyYAML (through OmegaConf) are used: the report runs without torch.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentgen.errors import ConfigError


@dataclass
class Job:
    num: int | None
    dir: Path | None
    status: str
    overrides: list[str] = field(default_factory=list)
    choices: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    compute: dict[str, Any] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)
    first_stage: dict[str, Any] = field(default_factory=dict)
    # The latent contract the run wrote into metrics.json (``latent``: downsample_factor, latent_channels,
    # latent_shape, latent_scale, latent_shift), read from its autoencoder: the one source of f.
    latent: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    # ------------------------------------------------------------------ derived
    @property
    def f(self) -> int | None:
        """The first stage's downsampling factor, as the run recorded it (None: the job never got that far)."""
        f = self.latent.get("downsample_factor")
        return None if f is None else int(f)

    @property
    def objective(self) -> str:
        return self.choices.get("objective") or _override_value(self.overrides, "objective") or "?"

    @property
    def pretrained(self) -> str | None:
        """The name of the pretrained first stage (e.g. a diffusers VAE folder) the run used, or None."""
        name = self.latent.get("pretrained")
        return None if name is None else str(name)

    @property
    def label(self) -> str:
        """``f=8``, or ``f=8 pretrained (sd-vae-ft-ema)`` for a pretrained first stage; for a job without a
        latent contract (failed, unfinished) the group choices its overrides made (``ldm=f16``), else its number."""
        if self.f is not None:
            return f"f={self.f}" + (f" pretrained ({self.pretrained})" if self.pretrained else "")
        chosen = [o.lstrip("+~") for o in self.overrides if o.partition("=")[0].lstrip("+~") in self.choices]
        return ", ".join(chosen) or f"job {self.num}"

    @property
    def latent_shape(self) -> str:
        """``h x w x C`` of the latents (LDM's z-shape notation)."""
        shape = self.latent.get("latent_shape") or self.compute.get("latent_shape")
        return f"{shape[1]}x{shape[2]}x{shape[0]}" if shape else "?"

    @property
    def milestones(self) -> list[dict[str, Any]]:
        return sorted(self.history.get("evals") or [], key=lambda e: e["step"])

    @property
    def finals(self) -> list[dict[str, Any]]:
        return sorted(self.history.get("final") or [], key=lambda e: e.get("sampling_steps") or 0)

    @property
    def reconstruction(self) -> dict[str, float]:
        rec = self.history.get("reconstruction") or {}
        return rec.get("metrics") or {}


def _override_value(overrides: list[str], key: str) -> str | None:
    for o in overrides:
        k, _, v = o.partition("=")
        if k.lstrip("+~") == key:
            return v
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_yaml(path: Path) -> Any:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # noqa: BLE001 - a damaged file only loses that information
        return None


def read_job(job_dir: Path) -> Job:
    job_dir = Path(job_dir)
    num = int(job_dir.name) if job_dir.name.isdigit() else None
    overrides = _read_yaml(job_dir / ".hydra" / "overrides.yaml") or []
    hydra_cfg = _read_yaml(job_dir / ".hydra" / "hydra.yaml") or {}
    choices = ((hydra_cfg.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
    record = _read_json(job_dir / "metrics.json")
    error_file = job_dir / "error.txt"
    job = Job(
        num=num,
        dir=job_dir,
        status="unfinished",
        overrides=[str(o) for o in overrides],
        choices={str(k): str(v) for k, v in choices.items() if v is not None},
    )
    if record is not None:
        job.latent = record.get("latent") or {}
        job.config = record.get("config") or {}
        job.metrics = record.get("metrics") or {}
        job.compute = record.get("compute") or {}
        status = record.get("status", "ok")
        job.status = "failed" if status == "failed" else "ok"
        if status == "failed":
            job.error = record.get("error")
    if error_file.is_file() and job.status != "ok":
        job.status = "failed"
        lines = [ln for ln in error_file.read_text(errors="replace").strip().splitlines() if ln.strip()]
        job.error = job.error or (lines[-1] if lines else "error.txt is empty")
    job.history = _read_json(job_dir / "eval_history.json") or {}
    fs = (job.config.get("first_stage") or {}).get("ckpt")
    if fs:
        fs_dir = Path(str(fs)).parent.parent
        fs_record = _read_json(fs_dir / "metrics.json") or {}
        job.first_stage = {"dir": str(fs_dir), **(fs_record.get("metrics") or {})}
    return job


def expected_job_count(sweep_dir: Path) -> int | None:
    """Jobs the basic sweeper makes from ``multirun.yaml`` (cartesian product of the comma lists), if simple."""
    cfg = _read_yaml(sweep_dir / "multirun.yaml")
    if not isinstance(cfg, dict):
        return None
    hydra = cfg.get("hydra") or {}
    task = list(((hydra.get("overrides") or {}).get("task")) or [])
    params = dict(((hydra.get("sweeper") or {}).get("params")) or {})
    sweeps: dict[str, int] = {}
    for key, value in params.items():
        sweeps[str(key)] = len(_split_choices(str(value)))
    for o in task:
        key, _, value = str(o).partition("=")
        n = len(_split_choices(value))
        if n > 1 or key in sweeps:
            sweeps[key] = n
    if not sweeps:
        return None
    return math.prod(sweeps.values())


def _split_choices(value: str) -> list[str]:
    if any(c in value for c in "[]{}()'\""):
        return [value]  # lists, quoted strings, range(): not parsed here
    return [v for v in value.split(",") if v.strip()] or [value]


def collect(sweep_dir: str | Path) -> list[Job]:
    """All jobs of a multirun dir, sorted by job number, including jobs that never started."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ConfigError(
            f"sweep dir '{sweep_dir}' does not exist (give the multirun dir, e.g. multirun/<date>/<time>)"
        )
    dirs = sorted(
        (p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()),
        key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name),
    )
    jobs = [read_job(d) for d in dirs]
    expected = expected_job_count(sweep_dir)
    seen = {j.num for j in jobs}
    if expected is not None:
        for n in itertools.count():
            if n >= expected:
                break
            if n not in seen:
                jobs.append(Job(num=n, dir=None, status="not started"))
    return sorted(jobs, key=lambda j: (j.num is None, j.num or 0))
