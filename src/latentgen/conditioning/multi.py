"""Combine several conditioners (e.g. text + low-res image) into one :class:`Conditioning`.

Merging rules (in the order of ``parts``):

- ``context``: tokens concatenated along M (every part with tokens must have the same width);
  ``context_mask`` concatenated too, all-True for a part that gives no mask;
- ``concat``: channels concatenated along C;
- ``vector``: concatenated along D (``vector_merge=cat``) or summed (``sum``, equal widths).

Dropout for CFG: with ``drop_prob`` set, one shared per-sample mask drops *all* parts of a sample
together (the usual CFG null); with ``drop_prob: null`` each part draws its own mask with its own
``drop_prob`` (independent dropout, as InstructPix2Pix does for image and text), from a sub-stream
named after the part. The drop mask is then (B, P) bool, column ``i`` for part ``i``. ``null(batch)`` is
the null of every part.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from latentgen.conditioning.base import Conditioner, Conditioning, check_declared_dims, drop_where
from latentgen.errors import ConfigError
from latentgen.randomness import BatchRandomness


def merge_conditionings(parts: list[Conditioning], vector_merge: str = "cat") -> Conditioning:
    """One Conditioning from several (see the module docstring for the rules)."""
    contexts = [p for p in parts if p.context is not None]
    context = mask = None
    if contexts:
        context = torch.cat([p.context for p in contexts], dim=1)  # (B, M_1 + M_2 + ..., D)
        if any(p.context_mask is not None for p in contexts):
            masks = [
                p.context_mask if p.context_mask is not None
                else torch.ones(p.context.shape[:2], dtype=torch.bool, device=p.context.device)
                for p in contexts
            ]  # fmt: skip
            mask = torch.cat(masks, dim=1)  # (B, M)
    vectors = [p.vector for p in parts if p.vector is not None]
    vector = None
    if vectors:
        vector = torch.cat(vectors, dim=-1) if vector_merge == "cat" else torch.stack(vectors).sum(0)  # (B, D_v)
    concats = [p.concat for p in parts if p.concat is not None]
    concat = torch.cat(concats, dim=1) if concats else None  # (B, C_1 + C_2 + ..., h, w)
    return Conditioning(context=context, context_mask=mask, vector=vector, concat=concat)


class MultiConditioner(Conditioner):
    """Several conditioners as one; see the module docstring.

    Args:
        parts: name -> conditioner (Hydra: a dict of conditioner nodes, e.g. ``defaults: [text@parts.text]``).
        drop_prob: shared per-sample drop probability; null = each part drops with its own ``drop_prob``.
        vector_merge: ``cat`` or ``sum`` for the parts' vectors.
        concat_channels, context_dim, vector_dim: what the config declares for the denoiser; checked.
    """

    def __init__(
        self,
        parts: Mapping[str, Conditioner],
        drop_prob: float | None = None,
        vector_merge: str = "cat",
        concat_channels: int = 0,
        context_dim: int | None = None,
        vector_dim: int | None = None,
    ) -> None:
        super().__init__(drop_prob=0.0 if drop_prob is None else float(drop_prob))
        if not parts:
            raise ConfigError("conditioner.parts is empty: give at least one conditioner")
        if vector_merge not in ("cat", "sum"):
            raise ConfigError(f"conditioner.vector_merge={vector_merge!r}: use 'cat' or 'sum'")
        self.shared_drop = drop_prob is not None
        self.vector_merge = vector_merge
        self.parts = nn.ModuleDict(dict(parts.items()))
        produced = self._dims()
        check_declared_dims("multi", (concat_channels, context_dim, vector_dim), produced, "the sum of its parts")
        self.concat_channels, self.context_dim, self.vector_dim = produced
        self.is_conditional = any(p.is_conditional for p in self.parts.values())
        self.accepts_prompts = any(getattr(p, "accepts_prompts", False) for p in self.parts.values())
        self.input_keys = tuple(dict.fromkeys(k for p in self.parts.values() for k in getattr(p, "input_keys", ())))

    def _dims(self) -> tuple[int, int | None, int | None]:
        concat = sum(int(getattr(p, "concat_channels", 0) or 0) for p in self.parts.values())
        ctx = {n: p.context_dim for n, p in self.parts.items() if getattr(p, "context_dim", None)}
        if len(set(ctx.values())) > 1:
            raise ConfigError(f"conditioner.parts give context tokens of different widths {ctx}: make them equal")
        vec = {n: p.vector_dim for n, p in self.parts.items() if getattr(p, "vector_dim", None)}
        if self.vector_merge == "sum" and len(set(vec.values())) > 1:
            raise ConfigError(
                f"conditioner.vector_merge=sum needs equal vector widths, got {vec}; use vector_merge=cat"
            )
        vector = (sum(vec.values()) if self.vector_merge == "cat" else next(iter(vec.values()))) if vec else None
        return concat, (next(iter(ctx.values())) if ctx else None), vector

    def set_first_stage(self, first_stage: nn.Module) -> None:
        for p in self.parts.values():
            if hasattr(p, "set_first_stage"):
                p.set_first_stage(first_stage)

    def draw_drop_mask(self, rng: BatchRandomness) -> torch.Tensor | None:
        """(B,) one mask for all parts (shared ``drop_prob``), or (B, P) one column per part (per-part
        dropout); None when nothing is dropped. The main stream gets its one uniform per sample either way."""
        u = rng.rand()  # (B,)
        if not self.training:
            return None
        if self.shared_drop:
            return drop_where(u, self.drop_prob)
        masks = []
        for name, part in self.parts.items():
            part_u = rng.substream(f"drop/{name}").rand()  # (B,)
            masks.append(torch.zeros_like(part_u, dtype=torch.bool) if part.drop_prob <= 0 else part_u < part.drop_prob)
        return torch.stack(masks, dim=1)  # (B, P)

    def _part_masks(self, drop_mask: torch.Tensor | None) -> list[torch.Tensor | None]:
        """The drop mask of each part: the shared (B,) mask for all, or column i of a (B, P) mask."""
        if drop_mask is None or drop_mask.dim() == 1:
            return [drop_mask] * len(self.parts)
        if drop_mask.shape[1] != len(self.parts):
            raise ValueError(f"a per-part drop mask needs {len(self.parts)} columns, got {tuple(drop_mask.shape)}")
        return [drop_mask[:, i] for i in range(len(self.parts))]

    def condition(
        self, batch: dict[str, Any], drop_mask: torch.Tensor | None, rng: BatchRandomness | None = None
    ) -> Conditioning:
        parts = [
            p.condition(batch, m, rng) for p, m in zip(self.parts.values(), self._part_masks(drop_mask))
        ]  # fmt: skip
        return merge_conditionings(parts, self.vector_merge)

    def encode(self, batch: dict[str, Any], drop_mask: torch.Tensor | None) -> Conditioning:
        return self.condition(batch, drop_mask, None)

    def null(self, batch: dict[str, Any]) -> Conditioning:
        return merge_conditionings([p.null(batch) for p in self.parts.values()], self.vector_merge)

    @torch.no_grad()
    def visualize(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """The visualizations of the parts that have one, side by side: (B, C, H, k*W); None if no part has one."""
        images = [p.visualize(batch) for p in self.parts.values() if hasattr(p, "visualize")]
        images = [im for im in images if im is not None]
        return torch.cat(images, dim=-1) if images else None  # (B, C, H, k*W)
