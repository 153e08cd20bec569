"""The unconditional "conditioner": every sample gets an empty :class:`Conditioning`."""

from __future__ import annotations

from typing import Any

import torch

from latentgen.conditioning.base import Conditioner, Conditioning
from latentgen.errors import ConfigError


class Unconditional(Conditioner):
    is_conditional = False

    def __init__(self, concat_channels: int = 0, context_dim: int | None = None, vector_dim: int | None = None) -> None:
        super().__init__(drop_prob=0.0)
        if concat_channels or context_dim or vector_dim:
            raise ConfigError(
                "conditioner=none produces no conditioning: conditioner.concat_channels must be 0 and "
                "conditioner.context_dim / vector_dim null"
            )
        self.concat_channels, self.context_dim, self.vector_dim = 0, None, None

    def encode(self, batch: dict[str, Any], drop_mask: torch.Tensor | None) -> Conditioning:
        return Conditioning()
