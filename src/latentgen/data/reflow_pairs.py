"""The reflow pair cache: couplings (noise, teacher sample) generated once by a teacher's ODE solver.

Reflow (Liu et al., ICLR 2023, "Flow Straight and Fast", §2.3) trains a student on the couplings
``(x_1, x_0) = (noise, ODE_teacher(noise))`` instead of independent (noise, data) pairs. Generating them is
the expensive part of the stage, so they are written to disk once and reused:

- **key.** A cache is keyed by what decides its contents: the teacher's weights (a SHA-256 over its state),
  the solver (its repr: class and options), the step count, the guidance scale, the number of pairs, the
  seed, the latent shape and the labels' range. A folder whose ``key.json`` differs is refused, naming the
  entries that differ: a cache is never silently reused for another teacher.
- **chunks.** Pairs are made in chunks of ``chunk_size``; chunk ``j`` draws its noise (and labels) from a
  generator seeded by ``(seed, j)``, so the pairs do not depend on how many processes made them. Under DDP
  rank ``r`` of ``W`` makes the chunks ``j = r mod W`` and writes each one atomically; every rank then waits
  for all chunks and reads them. A killed generation resumes with the chunks it has not written yet.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from latentgen.errors import DataError
from latentgen.files import atomic_torch_save, atomic_write_json

log = logging.getLogger("latentgen")

PAIR_CACHE_FORMAT = 1

# generate(noise (n, C, h, w), labels (n,) or None) -> teacher samples (n, C, h, w) (scaled latents)
Generate = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def pair_cache_key(
    *,
    teacher_digest: str,
    solver: str,
    steps: int | None,
    guidance_scale: float,
    count: int,
    seed: int,
    latent_shape: tuple[int, ...],
    num_classes: int | None,
    chunk_size: int,
) -> dict[str, Any]:
    """Everything the pairs depend on, as a JSON-able dict (the cache's ``key.json``)."""
    return {
        "format": PAIR_CACHE_FORMAT,
        "teacher": teacher_digest,
        "solver": solver,
        "steps": steps,
        "guidance_scale": float(guidance_scale),
        "count": int(count),
        "seed": int(seed),
        "latent_shape": list(latent_shape),
        "num_classes": num_classes,
        "chunk_size": int(chunk_size),
    }


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_pair_cache(folder: Path, key: dict[str, Any]) -> None:
    """Refuse a folder that holds pairs made for another key (another teacher, solver, step count...)."""
    key_file = folder / "key.json"
    if not key_file.is_file():
        return
    stored = json.loads(key_file.read_text())
    if stored == json.loads(json.dumps(key, default=str)):
        return
    differ = sorted(k for k in set(stored) | set(key) if stored.get(k) != key.get(k))
    shown = ", ".join(f"{k}: cache {stored.get(k)!r} vs now {key.get(k)!r}" for k in differ)
    raise DataError(
        f"the reflow pair cache '{folder}' was made for another teacher or solver ({shown}). Its pairs would "
        "train the student on the wrong couplings. Point distill.pairs at another folder (or leave it null: "
        "a folder named by the key), or delete this one to regenerate."
    )


def chunk_generator(seed: int, chunk: int) -> torch.Generator:
    """The generator of chunk ``chunk``: independent of the rank that makes it."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(chunk))


def process_rank() -> tuple[int, int]:
    """(rank, world size) of this process from the launcher's environment (torchrun, SLURM, Lightning)."""
    for rank_key, world_key in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if os.environ.get(rank_key) not in (None, "") and os.environ.get(world_key) not in (None, ""):
            return int(os.environ[rank_key]), int(os.environ[world_key])
    return 0, 1


def load_or_generate_pairs(
    folder: str | os.PathLike,
    key: dict[str, Any],
    generate: Generate,
    *,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    wait_timeout_s: float = 24 * 3600.0,
) -> dict[str, torch.Tensor]:
    """The pairs of ``key`` in ``folder`` (generated now where chunks are missing): ``{"noise": (N, C, h, w),
    "latent": (N, C, h, w)[, "label": (N,)]}``."""
    folder = Path(folder)
    check_pair_cache(folder, key)
    folder.mkdir(parents=True, exist_ok=True)
    if rank == 0 and not (folder / "key.json").is_file():
        atomic_write_json(folder / "key.json", key)
    count, chunk_size = int(key["count"]), int(key["chunk_size"])
    chunks = [(j, min(chunk_size, count - j * chunk_size)) for j in range((count + chunk_size - 1) // chunk_size)]
    mine = [(j, n) for j, n in chunks if j % world_size == rank and not _chunk_path(folder, j).is_file()]
    if mine:
        log.info(
            "reflow pairs: rank %d of %d generates %d of %d chunks into %s",
            rank,
            world_size,
            len(mine),
            len(chunks),
            folder,
        )
    iterator = mine
    if progress and rank == 0 and mine:
        from tqdm.auto import tqdm

        iterator = tqdm(mine, desc="reflow pairs (teacher ODE)", unit="chunk")
    shape = tuple(key["latent_shape"])
    for j, n in iterator:
        g = chunk_generator(int(key["seed"]), j)
        noise = torch.randn((n, *shape), generator=g)  # (n, C, h, w)
        labels = None if key["num_classes"] is None else torch.randint(0, int(key["num_classes"]), (n,), generator=g)
        latent = generate(noise, labels).detach().float().cpu()  # (n, C, h, w)
        chunk = {"noise": noise, "latent": latent}
        if labels is not None:
            chunk["label"] = labels
        atomic_torch_save(chunk, _chunk_path(folder, j))
    _wait_for_chunks(folder, [j for j, _ in chunks], wait_timeout_s)
    parts = [torch.load(_chunk_path(folder, j), map_location="cpu", weights_only=True) for j, _ in chunks]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _chunk_path(folder: Path, j: int) -> Path:
    return folder / f"chunk-{j:06d}.pt"


def _wait_for_chunks(folder: Path, chunks: list[int], timeout_s: float) -> None:
    """Wait until the other ranks have written their chunks."""
    start = time.time()
    while True:
        missing = [j for j in chunks if not _chunk_path(folder, j).is_file()]
        if not missing:
            return
        if time.time() - start > timeout_s:
            raise DataError(
                f"reflow pairs: chunks {missing[:8]} of '{folder}' were not written within {timeout_s:.0f} s "
                "(did another rank fail?)"
            )
        time.sleep(1.0)


class ReflowPairs(Dataset):
    """Rows of the pair tensors as batch dicts ``{"noise", "latent"[, "label"]}``; ``indices`` selects a split."""

    def __init__(self, pairs: dict[str, torch.Tensor], indices: range | list[int] | None = None) -> None:
        self.pairs = pairs
        self.indices = list(range(len(pairs["noise"]))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = self.indices[i]
        return {k: v[j] for k, v in self.pairs.items()}
