"""Class-label conditioning: a learned embedding per class plus a learned null class for CFG.

``as_context=True`` gives one cross-attention token per sample (LDM's ClassEmbedder);
``as_context=False`` gives a vector added to the denoiser's time embedding (ADM/DiT style).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from latentgen.conditioning.base import Conditioner, Conditioning, check_declared_dims
from latentgen.errors import ConfigError, DataError


class ClassConditioner(Conditioner):
    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        as_context: bool = True,
        drop_prob: float = 0.1,
        concat_channels: int = 0,
        context_dim: int | None = None,
        vector_dim: int | None = None,
    ) -> None:
        super().__init__(drop_prob=drop_prob)
        if num_classes is None or int(num_classes) < 1:
            raise ConfigError(
                f"conditioner=class needs a dataset with labels: data.num_classes is {num_classes!r}. "
                "Use data=digits or data=shapes, or data=folder data.labels_from_subfolders=true."
            )
        produced = (0, embed_dim, None) if as_context else (0, None, embed_dim)
        check_declared_dims(
            "class",
            (concat_channels, context_dim, vector_dim),
            produced,
            f"as_context={as_context}, embed_dim={embed_dim}",
        )
        self.num_classes = int(num_classes)
        self.as_context = as_context
        self.concat_channels, self.context_dim, self.vector_dim = 0, context_dim, vector_dim
        # Row `num_classes` is the learned null class used for dropped / unconditional samples.
        self.embedding = nn.Embedding(self.num_classes + 1, embed_dim)
        nn.init.normal_(self.embedding.weight, std=0.02)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def encode(self, batch: dict[str, Any], drop_mask: torch.Tensor | None) -> Conditioning:
        labels = batch.get("label")
        if labels is None:
            raise DataError("conditioner=class needs batch['label'], but the dataset gives no labels")
        labels = labels.long()
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise DataError(
                f"label out of range [0, {self.num_classes}) (data.num_classes={self.num_classes}): "
                f"got min {int(labels.min())}, max {int(labels.max())}"
            )
        if drop_mask is not None:
            labels = torch.where(drop_mask, torch.full_like(labels, self.null_label), labels)
        emb = self.embedding(labels)  # (B, D)
        if self.as_context:
            return Conditioning(context=emb[:, None, :])  # (B, 1, D)
        return Conditioning(vector=emb)
