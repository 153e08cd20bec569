"""CLIP image embeddings from a local ``transformers`` model directory (optional: ``latentgen[text]``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from latentgen.errors import ConfigError, WeightsNotFoundError
from latentgen.metrics.extractors.base import FeatureExtractor, resize_normalize, tensor_fingerprint

__all__ = ["CLIPExtractor"]

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPExtractor(FeatureExtractor):
    """CLIP image embeddings from a local ``transformers`` model directory (``extractor.model_path``)."""

    has_logits = False

    def __init__(self, model_path: str | os.PathLike | None = None, resolution: int = 224) -> None:
        super().__init__()
        p = None if model_path in (None, "") else Path(os.path.expanduser(str(model_path)))
        if p is None or not (p / "config.json").is_file():
            raise WeightsNotFoundError(
                f"CLIP image encoder: `extractor.model_path={model_path}` is not a local transformers model directory "
                "(no config.json there); latentgen never downloads weights at run time. Save one on a machine with "
                "internet (e.g. CLIPVisionModelWithProjection.from_pretrained('openai/clip-vit-base-patch32')"
                ".save_pretrained(DIR)) and set extractor.model_path=DIR."
            )
        try:
            from transformers import CLIPVisionModelWithProjection
        except ImportError as e:
            raise ConfigError("CLIPExtractor needs `transformers` (pip install 'latentgen[text]')") from e
        self.model = CLIPVisionModelWithProjection.from_pretrained(str(p), local_files_only=True)
        self.resolution = resolution
        self.feature_dim = int(self.model.config.projection_dim)
        self.name = f"clip-{p.name}-{resolution}px"
        self.weights_label = f"CLIP image encoder ({p})"
        self._freeze()

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = tensor_fingerprint(self)
        return self._fingerprint

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self._check_input(images)
        x = resize_normalize(images, self.resolution, _CLIP_MEAN, _CLIP_STD)
        return {"features": self.model(pixel_values=x).image_embeds.float()}  # (B, projection_dim)
