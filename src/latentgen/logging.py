"""Loggers. W&B is offline unless an API key is configured, so a run never hangs without a network."""

from __future__ import annotations

import json
import netrc
import os
import secrets
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from latentgen.files import atomic_write_json

# The W&B run of a run dir: its id is kept here so that a resumed run (ckpt_path=last|auto) continues the
# same W&B run, and evaluate.py can log into that run's group.
RUN_ID_FILE = "wandb_run.json"


def wandb_api_key_configured() -> bool:
    """True when WANDB_API_KEY is set or `wandb login` stored a key in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc(os.environ.get("NETRC", str(Path.home() / ".netrc"))).authenticators("api.wandb.ai")
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def resolve_wandb_mode(mode: str = "auto") -> str:
    """``auto``: the WANDB_MODE environment variable if set, else online with a key and offline without."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env:
        return env
    return "online" if wandb_api_key_configured() else "offline"


def stored_wandb_run(run_dir: str | os.PathLike) -> dict[str, str] | None:
    """``{"id": ..., "group": ...}`` of the W&B run a run dir logged to, or None."""
    try:
        record = json.loads((Path(run_dir) / RUN_ID_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("id") else None


def forget_wandb_run(run_dir: str | os.PathLike) -> None:
    """A fresh (not resumed) run in a used run dir starts a new W&B run."""
    if rank_zero_only.rank == 0:
        (Path(run_dir) / RUN_ID_FILE).unlink(missing_ok=True)


def make_wandb_logger(
    project: str = "latentgen",
    entity: str | None = None,
    group: str | None = None,
    tags: list[str] | tuple[str, ...] = (),
    save_dir: str = ".",
    mode: str = "auto",
    name: str | None = None,
) -> WandbLogger:
    """A Lightning WandbLogger writing under ``save_dir/wandb``; runs of one sweep share ``group``.

    The run continues across resumes: its id is kept in ``save_dir/wandb_run.json`` and passed back with
    ``resume="allow"``. A run without a group is its own group (named by its id), so that
    ``evaluate.py ckpt=<this run's checkpoint>`` can log into it and the review of a run is in one place.
    """
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    stored = stored_wandb_run(save_dir)
    run_id = stored["id"] if stored else secrets.token_hex(4)  # W&B ids: short [a-z0-9] strings
    group = group or (stored or {}).get("group") or run_id
    if rank_zero_only.rank == 0 and stored != {"id": run_id, "group": group}:
        atomic_write_json(Path(save_dir) / RUN_ID_FILE, {"id": run_id, "group": group})
    return WandbLogger(
        project=project,
        entity=entity,
        group=group,
        tags=list(tags),
        save_dir=save_dir,
        name=name,
        id=run_id,
        resume="allow",
        mode=resolve_wandb_mode(mode),
        log_model=False,
    )


def finish_wandb_run(exit_code: int = 0) -> None:
    """End the process's W&B run, if one is open, so that the next run started in this process (the latent
    model after its first stage, the next job of a sequential sweep, a test) starts its own."""
    import logging
    import sys

    wandb = sys.modules.get("wandb")  # never imported here just to finish nothing
    if wandb is not None and getattr(wandb, "run", None) is not None:
        try:
            wandb.finish(exit_code=exit_code)
        except Exception as e:  # noqa: BLE001 - logging must not fail the run
            logging.getLogger("latentgen").warning("wandb.finish failed: %s", e)
