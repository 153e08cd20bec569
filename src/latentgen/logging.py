"""Loggers. W&B is offline unless an API key is configured, so a run never hangs without a network."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger


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


def make_wandb_logger(
    project: str = "latentgen",
    entity: str | None = None,
    group: str | None = None,
    tags: list[str] | tuple[str, ...] = (),
    save_dir: str = ".",
    mode: str = "auto",
    name: str | None = None,
) -> WandbLogger:
    """A Lightning WandbLogger writing under ``save_dir/wandb``; runs of one sweep share ``group``."""
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=project,
        entity=entity,
        group=group,
        tags=list(tags),
        save_dir=save_dir,
        name=name,
        mode=resolve_wandb_mode(mode),
        log_model=False,
    )
