"""A reference to a frozen module that a conditioner uses but does not own.

The inpainting / encoded super-resolution conditioners encode images with the system's first stage,
and the pretrained text conditioner runs a frozen ``transformers`` model. Neither may become a
submodule of the conditioner:

- the system builds its EMA with ``copy.deepcopy(ModuleDict(denoiser, conditioner))``, which would
  copy the frozen module (twice the memory, and an EMA "update" over millions of frozen weights);
- it would appear in ``state_dict`` (the first stage is already saved under ``first_stage.``; the
  pretrained text encoder is read from its local path, not from our checkpoints).

:class:`SharedModule` holds the module outside ``nn.Module``'s registries, and its ``__deepcopy__``
returns the holder itself, so the EMA copy of the conditioner points at the same frozen module.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class SharedModule:
    """Holds a frozen ``nn.Module`` by reference: not a submodule, not in ``state_dict``, not deep-copied."""

    __slots__ = ("module",)

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedModule:
        memo[id(self)] = self
        return self

    def __copy__(self) -> SharedModule:
        return self

    def on(self, device: torch.device) -> nn.Module:
        """The module, moved to ``device`` first if it is elsewhere (Lightning only moves submodules)."""
        p = next(iter(self.module.parameters()), None)
        if p is not None and p.device != device:
            self.module.to(device)
        return self.module

    def __repr__(self) -> str:
        return f"SharedModule({type(self.module).__name__})"
