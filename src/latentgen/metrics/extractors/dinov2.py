"""FD-DINOv2 features (Stein et al. 2023): a DINOv2 backbone from a local clone and a local weights file."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from latentgen.errors import WeightsNotFoundError
from latentgen.metrics.extractors.base import FeatureExtractor, load_plain_state_dict, resize_normalize
from latentgen.weights import resolve_weights_file

__all__ = ["DINOv2Extractor"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class DINOv2Extractor(FeatureExtractor):
    """DINOv2 CLS features (FD-DINOv2, Stein et al. 2023) from a local repo clone and a local weights file.

    ``repo_dir`` (``extractor.repo_dir``): a clone of facebookresearch/dinov2 (has ``hubconf.py``),
    loaded with ``torch.hub.load(source="local", pretrained=False)``. ``weights_path``
    (``extractor.weights_path`` / ``$LATENTGEN_DINOV2_WEIGHTS`` / torch hub cache): e.g.
    ``dinov2_vitb14_pretrain.pth``. Images: bicubic resize to ``resolution``, ImageNet normalization.
    """

    has_logits = False

    def __init__(
        self,
        repo_dir: str | os.PathLike | None = None,
        weights_path: str | os.PathLike | None = None,
        model_name: str = "dinov2_vitb14",
        resolution: int = 224,
    ) -> None:
        super().__init__()
        short = model_name.replace("dinov2_", "").replace("_reg", "")
        path = resolve_weights_file(
            weights_path,
            what=f"DINOv2 backbone {model_name}",
            filename=f"{model_name}_pretrain.pth",
            config_key="extractor.weights_path",
            env_var="LATENTGEN_DINOV2_WEIGHTS",
            source_url=f"https://dl.fbaipublicfiles.com/dinov2/dinov2_{short}/{model_name}_pretrain.pth",
        )
        if repo_dir in (None, "") or not (Path(os.path.expanduser(str(repo_dir))) / "hubconf.py").is_file():
            raise WeightsNotFoundError(
                f"DINOv2 code: `extractor.repo_dir={repo_dir}` is not a local clone of "
                "https://github.com/facebookresearch/dinov2 (no hubconf.py there); latentgen never downloads code "
                "at run time. Clone it on a machine with internet and set extractor.repo_dir=/path/to/dinov2."
            )
        self.model = torch.hub.load(os.path.expanduser(str(repo_dir)), model_name, source="local", pretrained=False)
        self.model.load_state_dict(load_plain_state_dict(path, f"DINOv2 {model_name}"))
        self.weights_file = path
        self.resolution = resolution
        self.feature_dim = int(self.model.embed_dim)
        self.name = f"{model_name}-{resolution}px"
        self.weights_label = f"DINOv2 {model_name} ({path.name})"
        self._freeze()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self._check_input(images)
        x = resize_normalize(images, self.resolution, _IMAGENET_MEAN, _IMAGENET_STD)
        return {"features": self.model(x).float()}  # (B, D) CLS token after the final norm
