"""The conditioning contract between conditioners and denoisers.

A denoiser is called as ``denoiser(x_t, t, cond)`` with

- ``x_t``: (B, C, h, w) noisy latent,
- ``t``: (B,) float time in [0, 1] (t=0 data, t=1 noise),
- ``cond``: a :class:`Conditioning`, whose fields are all optional:

  - ``context`` (B, M, D) tokens for cross-attention (class tokens, text tokens, map tokens),
    with ``context_mask`` (B, M) bool, True = attend;
  - ``vector`` (B, D_v) added to the time embedding (class embedding, pooled text);
  - ``concat`` (B, C_c, h, w) channels concatenated to ``x_t`` (low-res image, masked image + mask,
    semantic map). The denoiser's ``in_channels`` is latent channels + ``C_c`` by config.

A :class:`Conditioner` builds a ``Conditioning`` from a batch dict. During training it replaces
the condition of a random subset of samples by the null condition (per-sample dropout,
probability ``drop_prob``), which is what classifier-free guidance needs. ``null(batch)``
gives the unconditional input used by guidance at sampling time.

The conditioner owns its randomness: :meth:`Conditioner.draw_drop_mask` (the one implementation of the
CFG drop mask) and :meth:`Conditioner.condition` (random inputs such as inpainting masks) draw from the
:class:`~latentgen.randomness.BatchRandomness` of the step, which the system hands down.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from latentgen.errors import ConfigError
from latentgen.randomness import BatchRandomness


@dataclass
class Conditioning:
    """What a denoiser is conditioned on. Every field may be None."""

    context: torch.Tensor | None = None
    context_mask: torch.Tensor | None = None
    vector: torch.Tensor | None = None
    concat: torch.Tensor | None = None

    def map(self, fn) -> Conditioning:
        """Apply ``fn`` to every tensor field (e.g. ``torch.cat``-ready repeat or ``.to(device)``)."""
        return Conditioning(
            **{f.name: (None if getattr(self, f.name) is None else fn(getattr(self, f.name))) for f in fields(self)}
        )

    @staticmethod
    def cat(a: Conditioning, b: Conditioning) -> Conditioning:
        """Concatenate two conditionings along the batch dimension (used to batch [uncond, cond] for CFG)."""
        out = {}
        for f in fields(Conditioning):
            va, vb = getattr(a, f.name), getattr(b, f.name)
            if (va is None) != (vb is None):
                raise ValueError(f"cannot batch conditionings: field '{f.name}' is set in one and not the other")
            out[f.name] = None if va is None else torch.cat([va, vb], dim=0)
        return Conditioning(**out)


class Conditioner(nn.Module):
    """Base class: ``forward(batch, rng=None) -> Conditioning`` and ``null(batch)``.

    Subclasses implement :meth:`encode` (deterministic); conditioners with random inputs override
    :meth:`condition`. A step is ``drop = draw_drop_mask(rng)``, then ``condition(batch, drop, rng)``;
    ``forward`` does both.

    Attributes:
        drop_prob: probability that a training sample gets the null condition.
        is_conditional: False only for the unconditional conditioner (guidance is then an error).
    """

    is_conditional: bool = True

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"conditioner.drop_prob must be in [0, 1], got {drop_prob}")
        self.drop_prob = drop_prob

    def encode(self, batch: dict[str, Any], drop_mask: torch.Tensor | None) -> Conditioning:
        """Build the conditioning; samples where ``drop_mask`` (B,) is True get the null condition."""
        raise NotImplementedError

    def condition(
        self, batch: dict[str, Any], drop_mask: torch.Tensor | None, rng: BatchRandomness | None = None
    ) -> Conditioning:
        """The conditioning of a step; conditioners with random inputs draw them from ``rng``."""
        return self.encode(batch, drop_mask)

    def draw_drop_mask(self, rng: BatchRandomness) -> torch.Tensor | None:
        """The per-sample CFG drop mask (B,) bool, True = null condition; None when nothing is dropped.

        One uniform per sample is drawn from ``rng`` whether or not anything is dropped (in eval mode, with
        ``drop_prob = 0``), so the numbers drawn after it do not depend on the conditioner's options.
        """
        u = rng.rand()  # (B,) uniform in [0, 1)
        return drop_where(u, self.drop_prob) if self.training else None

    def null(self, batch: dict[str, Any]) -> Conditioning:
        """The unconditional input for every sample of ``batch``."""
        b = batch_size_of(batch)
        return self.encode(batch, torch.ones(b, dtype=torch.bool, device=batch_device(batch)))

    def forward(self, batch: dict[str, Any], rng: BatchRandomness | None = None) -> Conditioning:
        """Draw the drop mask and the conditioning; ``rng=None`` draws from torch's global RNG in training
        and draws nothing in eval mode (sampling leaves the global RNG alone)."""
        if rng is None:
            if not self.training:
                return self.condition(batch, None, None)
            rng = BatchRandomness.local(batch_size_of(batch), device=batch_device(batch))
        return self.condition(batch, self.draw_drop_mask(rng), rng)


def drop_where(u: torch.Tensor, drop_prob: float) -> torch.Tensor | None:
    """``u < drop_prob`` (B,) bool, or None when ``drop_prob`` is 0 (nothing dropped)."""
    return u < drop_prob if drop_prob > 0 else None


def check_declared_dims(
    name: str,
    declared: tuple[int | None, int | None, int | None],
    produced: tuple[int, int | None, int | None],
    why: str,
) -> None:
    """The config declares ``(concat_channels, context_dim, vector_dim)`` so that the denoiser's
    ``in_channels`` / ``context_dim`` / ``vector_dim`` can interpolate them; they must equal what the
    conditioner really produces, or the denoiser would be built for another input."""
    concat, context, vector = declared
    if (int(concat or 0), context, vector) != tuple(produced):

        def show(v):
            return "null" if v is None else str(v)

        raise ConfigError(
            f"conditioner={name}: concat_channels/context_dim/vector_dim = "
            f"{'/'.join(show(v) for v in declared)} but it produces {'/'.join(show(v) for v in produced)} ({why}). "
            "Set them to what it produces (the experiment configs interpolate them)."
        )


def batch_size_of(batch: dict[str, Any]) -> int:
    for v in batch.values():
        if isinstance(v, torch.Tensor):
            return v.shape[0]
        if isinstance(v, (list, tuple)):
            return len(v)
    raise ValueError("cannot infer the batch size: the batch has no tensor or list entry")


def batch_device(batch: dict[str, Any]) -> torch.device:
    for v in batch.values():
        if isinstance(v, torch.Tensor):
            return v.device
    return torch.device("cpu")
