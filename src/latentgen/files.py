"""Writing files safely when a run can be killed at any moment and several DDP ranks share a directory.

Every write goes to a temporary file with a name no other process uses (``tempfile.mkstemp``) in the
target's directory and is then renamed over the target with ``os.replace`` (atomic on POSIX), so a
reader sees the old file or the new one, never half of one, and two ranks never delete each other's
temporary file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a fresh binary temporary file beside ``path``, fsync it, rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any, default: Callable[[Any], Any] = str) -> Path:
    """``obj`` as indented JSON with sorted keys; ``default`` turns values JSON cannot hold into ones it can."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=default)
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def probe_writable(directory: str | os.PathLike, num_bytes: int = 4096) -> None:
    """Create ``directory`` and write + delete ``num_bytes`` in it; raises OSError when that fails.
    The probe's name is unique to this call: ranks starting together in one run dir each probe their own
    file (a shared fixed name let one rank delete the other's probe, which then failed to start)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"0" * num_bytes)
    finally:
        os.unlink(probe)
