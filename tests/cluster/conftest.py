"""The one-node SLURM cluster of the ``slurm`` tests: the one named by ``$SLURM_CONF`` when it answers (CI
starts it with slurm_up.sh), else one started here with slurm_up.sh and stopped at the end of the session.
When SLURM cannot start, every ``slurm`` test is skipped with the reason."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
UP_TIMEOUT_S = 900  # installing slurm-wlm and munge with apt-get included


def _answers(conf: str) -> bool:
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%t"], env={**os.environ, "SLURM_CONF": conf}, capture_output=True, text=True,
            timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.split()[:1] in (["idle"], ["mix"], ["alloc"])


@pytest.fixture(scope="session")
def slurm_conf() -> str:
    """The path of a running cluster's slurm.conf."""
    given = os.environ.get("SLURM_CONF")
    if given and _answers(given):
        yield given
        return
    try:
        up = subprocess.run([str(HERE / "slurm_up.sh")], capture_output=True, text=True, timeout=UP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"SLURM could not be started: {e}")
    exports = dict(
        line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines() if line.startswith("export ")
    )
    if up.returncode != 0 or "SLURM_CONF" not in exports:
        reason = f"SLURM could not be started (tests/cluster/slurm_up.sh exit {up.returncode}): {up.stderr[-1500:]}"
        print(reason)
        pytest.skip(reason)
    try:
        yield exports["SLURM_CONF"]
    finally:
        subprocess.run([str(HERE / "slurm_down.sh"), exports["LATENTGEN_SLURM_DIR"]], timeout=120)
