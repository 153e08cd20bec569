"""Timing shared by the benchmarks that compare latentgen with a peer in one process (unet_speed.py,
dit_speed.py): one call timed in wall and process-CPU seconds, runners interleaved so that load drifts on a
shared machine hit both, and the machine facts written beside the figures."""

from __future__ import annotations

import datetime
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch


def timed(fn: Callable[[], Any], autocast: bool) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call, under bf16 autocast if asked."""
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext()
    t0, c0 = time.perf_counter(), time.process_time()
    with ctx:
        fn()
    return time.perf_counter() - t0, time.process_time() - c0


def interleave(
    runners: list[Any], step_of: Callable[[Any], Callable[[], Any]], autocast: bool, warmup: int, iters: int
) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds per iteration of each runner (keyed by ``runner.impl``; ``step_of(runner)`` is
    the call to time), run alternately, the order reversed every iteration, so load drifts hit both.

    On a shared machine the wall time includes waiting for a core; the process CPU time does not, so
    ratios between runners are taken from CPU time (with 1 thread the two agree on an idle machine).
    """
    times: dict[str, list[tuple[float, float]]] = {r.impl: [] for r in runners}
    for i in range(warmup + iters):
        for r in runners if i % 2 == 0 else runners[::-1]:
            dt = timed(step_of(r), autocast)
            if i >= warmup:
                times[r.impl].append(dt)
    return {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}


def machine() -> dict[str, Any]:
    """The processor's model name, Python, torch and diffusers versions, threads and the date."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import diffusers

    return {
        "cpu": cpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "threads": torch.get_num_threads(),
        "date": datetime.date.today().isoformat(),
    }
