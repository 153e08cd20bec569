"""Per-step randomness that does not depend on how a global batch is split over devices.

Every random number of a step of the latent model is drawn for the whole GLOBAL batch from one
:class:`BatchRandomness` that the system hands down, and each rank keeps the rows of its own samples.
The owners of the numbers draw them: the conditioner its CFG drop mask (and random inputs such as
inpainting masks), the objective ``t`` and ``eps`` (offset noise included), the first stage its posterior
sample. In training the generator is seeded by ``(run seed, batch count)``; a validation batch has a fixed
seed of its own, and it takes the same path.

With the DataModule's contiguous sharding (rank ``r`` of ``W`` holds positions ``r*B .. r*B + B - 1`` of
every global batch of ``W*B``), a 2-process DDP run and a 1-process run with the same global batch draw
identical numbers for identical samples, and a resumed run draws what the uninterrupted run drew, without
restoring any RNG.

The main stream of a training step always holds, in this order: one uniform per sample (the conditioner's
drop draw, made even when nothing is dropped), ``t``, ``eps``, the offset noise (drawn even when
``offset_noise = 0``) and the posterior noise; so none of them depends on options that only change what is
done with them. Any further numbers (per-part drop masks, inpainting masks) come from named sub-streams
(:meth:`BatchRandomness.substream`), which leave the main stream untouched.

The draws are made on the batch's device (a CUDA generator costs microseconds); every rank draws the
global batch, ``W`` times its own share, which is small next to a training step (about 5 ms on one CPU
core for a global batch of 256 latents of 4x32x32).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import numpy as np
import torch

__all__ = ["BatchRandomness", "step_seed"]


def step_seed(seed: int, step: int, *keys: int) -> int:
    """A 63-bit seed from (run seed, batch count[, sub-stream keys]); numpy SeedSequence mixing (stable
    across versions)."""
    entropy = [int(w) & 0xFFFFFFFFFFFFFFFF for w in (seed, step, *keys)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) >> 1


def _key(name: str) -> int:
    """A stable integer for a sub-stream name."""
    return zlib.crc32(name.encode())


# The fixed seed word of validation batches (validation step ``i`` is seeded by (this, i)).
VALIDATION_SEED = _key("validation")


class BatchRandomness:
    """A generator for one step of a global batch of ``world_size * batch_size`` samples.

    Every draw is made for the global batch, ``(N, *shape)``, and returns the rows of this rank,
    ``(batch_size, *shape)``. ``generator=None`` draws from torch's global RNG (a module used on its own,
    outside a system).

    Args:
        generator: the step's generator (or None: the global RNG).
        batch_size: samples on this rank.
        rank, world_size: this rank's place; rank ``r`` holds rows ``r*batch_size .. (r+1)*batch_size - 1``.
        device: where the numbers are drawn (the generator's device when one is given).
        entropy: the seed words of the generator, from which sub-streams are derived (None: no sub-streams
            of their own; they then draw from the same generator).
    """

    def __init__(
        self,
        generator: torch.Generator | None,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
        entropy: Sequence[int] | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size}")
        self.generator = generator
        self.batch_size, self.rank, self.world_size = int(batch_size), int(rank), int(world_size)
        self.device = generator.device if generator is not None else torch.device(device or "cpu")
        self.entropy = None if entropy is None else tuple(int(w) for w in entropy)

    @classmethod
    def for_step(
        cls,
        seed: int,
        step: int,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
    ) -> BatchRandomness:
        """The generator of step ``step`` of a run seeded with ``seed``."""
        g = torch.Generator(device=device).manual_seed(step_seed(seed, step))
        return cls(g, batch_size, rank=rank, world_size=world_size, entropy=(seed, step))

    @classmethod
    def for_validation(
        cls, batch_idx: int, batch_size: int, *, rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu"
    ) -> BatchRandomness:
        """The fixed generator of validation batch ``batch_idx`` (the same at every validation)."""
        return cls.for_step(VALIDATION_SEED, batch_idx, batch_size, rank=rank, world_size=world_size, device=device)

    @classmethod
    def local(cls, batch_size: int, generator: torch.Generator | None = None, device=None) -> BatchRandomness:
        """One process, the whole batch, from ``generator`` (None: the global RNG)."""
        return cls(generator, batch_size, device=device)

    @property
    def global_batch_size(self) -> int:
        return self.world_size * self.batch_size

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global-batch tensor: (N, ...) -> (batch_size, ...)."""
        return x[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def draw(self, fn: Callable[[int, torch.Generator | None, torch.device], torch.Tensor]) -> torch.Tensor:
        """``fn(N, generator, device) -> (N, ...)`` drawn for the global batch; returns this rank's rows."""
        return self.rows(fn(self.global_batch_size, self.generator, self.device))

    def rand(self, *shape: int) -> torch.Tensor:
        """U[0, 1) of (batch_size, *shape), float32."""
        return self.draw(lambda n, g, d: torch.rand((n, *shape), generator=g, device=d))

    def randn(self, *shape: int) -> torch.Tensor:
        """N(0, 1) of (batch_size, *shape), float32."""
        return self.draw(lambda n, g, d: torch.randn((n, *shape), generator=g, device=d))

    def substream(self, name: str, device: torch.device | str | None = None) -> BatchRandomness:
        """An independent generator named ``name`` for the same samples (on ``device``, default this one's).

        With seed words (every step generator of a system) it is seeded by (these words, ``name``), and
        neither making it nor drawing from it touches this stream. Without them (a generator given from
        outside, in tests and benchmarks) it is seeded by one draw from this generator; on the global RNG
        it is the global RNG itself.
        """
        device = torch.device(device) if device is not None else self.device
        if self.entropy is not None:
            words = (*self.entropy, _key(name))
            g = torch.Generator(device=device).manual_seed(step_seed(*words))
        elif self.generator is not None:
            seed = int(torch.randint(0, 2**62, (1,), generator=self.generator, device=self.generator.device))
            g, words = torch.Generator(device=device).manual_seed(seed), None
        else:
            return BatchRandomness(None, self.batch_size, rank=self.rank, world_size=self.world_size, device=device)
        return BatchRandomness(g, self.batch_size, rank=self.rank, world_size=self.world_size, entropy=words)

    def __repr__(self) -> str:
        return (
            f"BatchRandomness(batch_size={self.batch_size}, rank={self.rank}, world_size={self.world_size}, "
            f"device={self.device}, entropy={self.entropy})"
        )
