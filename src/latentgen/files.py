"""Writing files safely when a run can be killed at any moment and several DDP ranks share a directory.

Every write goes to a temporary file with a name no other process uses (``tempfile.mkstemp``) in the
target's directory and is then renamed over the target with ``os.replace`` (atomic on POSIX), so a
reader sees the old file or the new one, never half of one, and two ranks never delete each other's
temporary file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("latentgen")


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


def write_json_rank_zero(path: str | os.PathLike, obj: Any) -> None:
    """:func:`atomic_write_json` on global rank 0 only (a no-op on the other ranks of a DDP run)."""
    from lightning.pytorch.utilities import rank_zero_only

    rank_zero_only(atomic_write_json)(path, obj)


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, *, enabled: bool = True) -> Iterator[None]:
    """Hold an exclusive lock file (``filelock``: fcntl on POSIX) for the block: concurrent processes that
    need the same result (two sweep jobs training one first stage) wait for each other instead of writing
    one directory at once. ``enabled=False`` (e.g. in a DDP rank > 0) takes no lock."""
    if not enabled:
        yield
        return
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for %s (another process holds it)", path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
