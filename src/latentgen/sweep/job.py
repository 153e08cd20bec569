"""One job of a sweep (a config with a ``sweep`` node, e.g. experiment=f_sweep).

``run_sweep_job(cfg, train_fn)`` wraps the training root's ``train_fn`` (latentgen.app.training):

- **skip finished jobs**: a run dir whose ``metrics.json`` has ``status: ok`` and the same config
  (:func:`comparable_config`: the resolved config without paths, logging and bookkeeping keys)
  is not trained again (re-run a sweep with the same ``hydra.sweep.dir=...``; the job numbers are the
  same for the same overrides). First stages are reused anyway (``paths.first_stage_cache``).
- **failures do not stop the sweep** (``sweep.continue_on_error``): the traceback goes to
  ``error.txt``, ``metrics.json`` says ``status: failed``, and the job returns normally, so Hydra's
  launcher goes on with the next job.
- **W&B**: every job of one sweep shares a group (``sweep.group``, default ``<sweep.name>-<date>_<time>``
  of the sweep dir) and carries a tag ``<group>=<choice>`` for every config group the job's overrides
  choose (``ldm=f8``, ``objective=rectified_flow``); the latent contract (f, latent channels, scale, shift)
  is logged by the training root once the first stage is built (``latent/downsample_factor`` in the W&B
  config), from the autoencoder itself. The W&B run is finished at the end of each job so the next job of
  a sequential sweep starts its own.
- **compute**: the whole job's wall time and the compute accounting of the training
  (``compute.json``, callbacks.compute_accounting) are merged into ``metrics.json``.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from latentgen.config import config_hash
from latentgen.files import write_json_rank_zero
from latentgen.logging import finish_wandb_run

log = logging.getLogger("latentgen")

METRICS_FILE = "metrics.json"
ERROR_FILE = "error.txt"
COMPUTE_FILE = "compute.json"
HISTORY_FILE = "eval_history.json"
# Keys that do not change what a job trains and reports: where it writes, how it logs, the sweep's own
# bookkeeping, the first-stage checkpoint path (filled in during the run) and callbacks other than the
# evaluation (checkpointing, progress bars, grids).
_IGNORED = (
    "paths",
    "logger",
    "hydra",
    "first_stage.ckpt",
    "trainer.enable_progress_bar",
    "sweep.continue_on_error",
    "sweep.skip_finished",
    "sweep.group",
)
_KEPT_CALLBACKS = ("generative_eval",)


def comparable_config(plain: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that decides what a sweep job trains and reports."""
    out = json.loads(json.dumps(plain, default=str))  # a deep copy of plain data
    for key in _IGNORED:
        node, *rest = key.split(".")
        if rest and isinstance(out.get(node), dict):
            out[node].pop(rest[0], None)
        elif not rest:
            out.pop(node, None)
    callbacks = out.get("callbacks") or {}
    out["callbacks"] = {k: v for k, v in callbacks.items() if k in _KEPT_CALLBACKS}
    return out


def config_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two comparable configs. Keys present in only one of them
    are not differences: a key that did not exist when a job ran (a new option with its default) did not
    change that job."""
    if isinstance(old, dict) and isinstance(new, dict):
        diffs: list[str] = []
        for k in sorted(set(old) & set(new)):
            diffs += config_differences(old[k], new[k], f"{prefix}{k}.")
        return diffs
    return [] if old == new else [prefix.rstrip(".")]


def job_config_hash(cfg: DictConfig) -> str:
    """A short hash of :func:`comparable_config` (recorded in metrics.json for reference)."""
    return config_hash(comparable_config(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)))


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def hydra_choices() -> dict[str, str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return {str(k): str(v) for k, v in HydraConfig.get().runtime.choices.items() if v is not None}
    except ValueError:
        return {}


def hydra_sweep_dir() -> Path | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        from hydra.types import RunMode

        return Path(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None
    except (ValueError, AttributeError):
        return None


def sweep_group(cfg: DictConfig, output_dir: Path) -> str:
    """``sweep.group`` if set, else ``<sweep.name>-<date>_<time>`` of the multirun dir (its last two parts)."""
    if cfg.sweep.get("group"):
        return str(cfg.sweep.group)
    base = hydra_sweep_dir() or output_dir.parent
    return f"{cfg.sweep.get('name') or 'sweep'}-{base.parent.name}_{base.name}"


def hydra_overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return [str(o) for o in HydraConfig.get().overrides.task]
    except ValueError:
        return []


def chosen_groups(overrides: list[str], choices: dict[str, str]) -> dict[str, str]:
    """The config groups a job's overrides choose (``ldm=f8`` -> ``{"ldm": "f8"}``), in override order;
    plain value overrides (``trainer.max_steps=10``) are not group choices."""
    chosen = {}
    for override in overrides:
        key = override.partition("=")[0].lstrip("+~")
        if key in choices:
            chosen[key] = choices[key]
    return chosen


def sweep_tags(cfg: DictConfig) -> list[str]:
    choices = hydra_choices()
    tags = [f"{group}={choice}" for group, choice in chosen_groups(hydra_overrides(), choices).items()]
    tags.append(f"objective={choices.get('objective', 'unknown')}")
    if cfg.sweep.get("name"):
        tags.append(str(cfg.sweep.name))
    return sorted(set(tags))


def _apply_logging(cfg: DictConfig, output_dir: Path) -> None:
    logger = cfg.get("logger")
    if logger is None or "group" not in logger:
        return
    with open_dict(cfg):
        if not logger.get("group"):
            logger.group = sweep_group(cfg, output_dir)
        logger.tags = sorted(set(list(logger.get("tags") or []) + sweep_tags(cfg)))
        if str(logger.get("_target_", "")).endswith("make_wandb_logger") and not logger.get("name"):
            label = "-".join(chosen_groups(hydra_overrides(), hydra_choices()).values()) or "job"
            logger.name = f"{cfg.sweep.get('name') or 'sweep'}-{label}-{output_dir.name}"


def job_info(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """What identifies the job in its sweep (its latent contract is the training root's ``latent`` entry)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        num = HydraConfig.get().job.get("num")
    except ValueError:
        num = None
    return {"choices": hydra_choices(), "overrides": hydra_overrides(), "job_num": num, "dir": str(output_dir)}


def run_sweep_job(cfg: DictConfig, train_fn: Callable[[DictConfig], dict[str, float]]) -> dict[str, float]:
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    chash = job_config_hash(cfg)
    metrics_path = output_dir / METRICS_FILE
    previous = read_json(metrics_path)
    if cfg.sweep.get("skip_finished", True) and previous and previous.get("status") == "ok":
        current = comparable_config(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))
        diffs = config_differences(comparable_config(previous.get("config") or {}), current)
        if not diffs and previous.get("config"):
            log.info("sweep job %s finished before with the same config (%s): skipped", output_dir, chash)
            return dict(previous.get("metrics") or {})
        log.info(
            "sweep job %s: its metrics.json is for another config (differs in %s); training again",
            output_dir,
            ", ".join(diffs[:8]) or "everything",
        )
        # never resume (ckpt_path=auto) from the checkpoints of another config
        ckpts = output_dir / "checkpoints"
        if ckpts.is_dir():
            ckpts.rename(output_dir / f"checkpoints.previous-{previous.get('config_hash', 'unknown')}")
    (output_dir / ERROR_FILE).unlink(missing_ok=True)
    resuming = cfg.get("ckpt_path") in ("last", "auto") and (output_dir / "checkpoints" / "last.ckpt").is_file()
    if not resuming:  # a requeued job keeps the evaluations it made before it was stopped
        for stale in (COMPUTE_FILE, HISTORY_FILE):
            (output_dir / stale).unlink(missing_ok=True)
    _apply_logging(cfg, output_dir)
    info = job_info(cfg, output_dir)
    start = time.time()
    try:
        metrics = train_fn(cfg)
    except Exception as e:
        if not cfg.sweep.get("continue_on_error", False):
            finish_wandb_run(1)
            raise
        tb = traceback.format_exc()
        (output_dir / ERROR_FILE).write_text(tb)
        log.error(
            "sweep job %s failed (%s: %s); recorded in %s, the sweep goes on",
            output_dir,
            type(e).__name__,
            e,
            output_dir / ERROR_FILE,
        )
        write_json_rank_zero(
            metrics_path,
            {
                "status": "failed",
                "error": f"{type(e).__name__}: {e}",
                "config_hash": chash,
                "job": info,
                "job_wall_time_s": time.time() - start,
            },
        )
        finish_wandb_run(1)
        return {}
    record = read_json(metrics_path) or {"metrics": dict(metrics)}
    compute = read_json(output_dir / COMPUTE_FILE) or {}
    compute["job_wall_time_s"] = time.time() - start
    record.update({"status": "ok", "config_hash": chash, "job": info, "compute": compute})
    write_json_rank_zero(metrics_path, record)
    finish_wandb_run(0)
    return metrics
