"""Perceptual distances for first-stage training: LPIPS (our implementation), shift-tolerant LPIPS, none.

LPIPS v0.1 (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric", Eq. 1):

    d(x, y) = sum_l  1/(H_l W_l) sum_{h,w} || w_l ⊙ (f̂^l_{hw}(x) - f̂^l_{hw}(y)) ||_2^2

where f̂^l is the backbone activation at tap l, unit-normalised over channels, and w_l the learned
per-channel weights (a 1x1 conv without bias, the "lin" layers). With the squared difference fed to
the 1x1 conv this is ``mean_hw(lin_l((f̂x - f̂y)^2))`` summed over taps.

Weights are never downloaded (latentgen.weights):

- the ImageNet backbone comes from a local torchvision state_dict file
  (``perceptual.backbone_weights``, ``$LATENTGEN_LPIPS_BACKBONE`` or torch's hub cache);
- the lin layers come from the ``lpips`` pip package's shipped files (``lpips/weights/v0.1/<net>.pth``)
  or a local ``perceptual.lin_weights``.

Every perceptual module here takes images in [-1, 1] of shape (B, C, H, W) with C in {1, 3} (one
channel is repeated to RGB), returns one distance per image, shape **(B,)**, float32, and has a
``name`` for logs. They are frozen: no parameter requires grad, the module stays in eval mode whatever
``train()`` is called with, it computes in float32 with autocast disabled, and its weights are **not
written to state_dict** (they are external assets, re-read from their files on construction; loading a
checkpoint neither needs nor overwrites them). Gradients do flow to the *inputs*.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, cast

import torch
from torch import nn

from latentgen.errors import CheckpointError, ConfigError
from latentgen.weights import resolve_weights_file

__all__ = ["LPIPS", "NoPerceptual", "ShiftTolerantLPIPS", "LPIPS_SHIFT", "LPIPS_SCALE"]

# ScalingLayer of LPIPS v0.1: maps [-1, 1] inputs to ImageNet-normalised ones,
# x' = (x - shift) / scale, with shift = 2*mean - 1 and scale = 2*std of the ImageNet RGB statistics
# (mean 0.485, 0.456, 0.406; std 0.229, 0.224, 0.225).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


# ---------------------------------------------------------------------------------------------- base
class _FrozenPerceptual(nn.Module):
    """Shared behaviour of the frozen perceptual networks (see the module docstring)."""

    name: str = "frozen"
    measures_distance = True  # a real perceptual distance (reported as LPIPS)

    def _freeze(self) -> None:
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "_FrozenPerceptual":
        # Always eval: no dropout in the lin layers, no state changes; train(True) is a no-op.
        return super().train(False)

    # --- weights are external assets: keep them out of checkpoints --------------------------------
    def _register_no_checkpoint_hooks(self) -> None:
        # Runs after our subtree has been written (also when we are a child): remove it again.
        self.register_state_dict_post_hook(_drop_own_keys)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        # Checkpoints do not hold our weights; fill in the current values so that strict loading of a
        # parent passes, and ignore any older values a checkpoint may carry (the file is the truth).
        for key, t in _own_tensors(self):
            state_dict[prefix + key] = t.detach()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --- forward ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance between ``x`` and ``y`` (B, C, H, W) in [-1, 1]; returns (B,) float32."""
        if x.shape != y.shape:
            raise ValueError(f"{self.name}: inputs must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        x, y = _to_rgb(x, self.name), _to_rgb(y, self.name)
        with torch.autocast(device_type=x.device.type, enabled=False):
            dtype = self._compute_dtype()
            return self._distance(x.to(dtype), y.to(dtype)).float()

    def _compute_dtype(self) -> torch.dtype:
        p = next(self.parameters(), None)
        return torch.float32 if p is None else p.dtype

    def _distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


def _own_tensors(module: nn.Module):
    """(key, tensor) of everything ``nn.Module.state_dict`` would save for ``module`` (persistent only)."""
    for prefix, m in module.named_modules():
        p = f"{prefix}." if prefix else ""
        for k, t in m._parameters.items():
            if t is not None:
                yield p + k, t
        for k, t in m._buffers.items():
            if t is not None and k not in m._non_persistent_buffers_set:
                yield p + k, t


def _drop_own_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]


def _to_rgb(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{name}: expects (B, 1|3, H, W) images in [-1, 1], got shape {tuple(x.shape)}")
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # (B, 3, H, W)


def _normalize_channels(f: torch.Tensor, eps: float) -> torch.Tensor:
    """Unit-normalise each spatial feature vector over channels: f / (||f||_2 + eps). (B, C, H, W)."""
    return f / (torch.linalg.vector_norm(f, dim=1, keepdim=True) + eps)


# --------------------------------------------------------------------------------------------- LPIPS
@dataclass(frozen=True)
class _Backbone:
    """A torchvision backbone: where its file comes from and where LPIPS taps its ``features``."""

    build: Callable[..., nn.Module]
    filename: str
    url: str
    what: str
    env_var: str
    taps: tuple[int, ...]  # indices in ``model.features`` (after a ReLU) whose outputs are compared
    channels: tuple[int, ...]
    name: str


def _vgg16(**kw: Any) -> nn.Module:
    from torchvision.models import vgg16

    return vgg16(**kw)


def _alexnet(**kw: Any) -> nn.Module:
    from torchvision.models import alexnet

    return alexnet(**kw)


_BACKBONES: dict[str, _Backbone] = {
    # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
    "vgg": _Backbone(
        build=_vgg16,
        filename="vgg16-397923af.pth",
        url="https://download.pytorch.org/models/vgg16-397923af.pth",
        what="VGG16 ImageNet backbone for LPIPS",
        env_var="LATENTGEN_LPIPS_BACKBONE",
        taps=(3, 8, 15, 22, 29),
        channels=(64, 128, 256, 512, 512),
        name="lpips-vgg16",
    ),
    # relu1 .. relu5
    "alex": _Backbone(
        build=_alexnet,
        filename="alexnet-owt-7be5be79.pth",
        url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        what="AlexNet ImageNet backbone for LPIPS",
        env_var="LATENTGEN_LPIPS_ALEX_BACKBONE",
        taps=(1, 4, 7, 9, 11),
        channels=(64, 192, 384, 256, 256),
        name="lpips-alexnet",
    ),
}

LIN_WEIGHTS_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/{net}.pth"


def lpips_package_lin_weights(net: str, version: str = "0.1") -> Path | None:
    """Path of the lin-layer file shipped in the ``lpips`` pip package (without importing it), or None."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "weights" / f"v{version}" / f"{net}.pth"


class LPIPS(_FrozenPerceptual):
    """LPIPS v0.1 with a VGG16 (default, as in LDM/taming) or AlexNet backbone.

    Args:
        net: "vgg" or "alex".
        backbone_weights: local torchvision ImageNet state_dict of the backbone (the file
            ``vgg16-397923af.pth`` / ``alexnet-owt-7be5be79.pth``). None: ``$LATENTGEN_LPIPS_BACKBONE``
            (``$LATENTGEN_LPIPS_ALEX_BACKBONE`` for alex), then ``$TORCH_HOME/hub/checkpoints``.
        lin_weights: local LPIPS v0.1 lin-layer file; None: the one shipped in the ``lpips`` package.
        eps: added to the channel norm (LPIPS uses 1e-10).

    ``forward(x, y)`` -> (B,) distances; inputs (B, 1|3, H, W) in [-1, 1].
    """

    shift: torch.Tensor  # (1, 3, 1, 1) buffer, registered in __init__
    scale: torch.Tensor  # (1, 3, 1, 1) buffer

    def __init__(
        self,
        net: str = "vgg",
        backbone_weights: str | os.PathLike | None = None,
        lin_weights: str | os.PathLike | None = None,
        eps: float = 1e-10,
    ) -> None:
        super().__init__()
        if net not in _BACKBONES:
            raise ConfigError(f"perceptual.net={net!r} is not supported by LPIPS; use one of {sorted(_BACKBONES)}")
        spec = _BACKBONES[net]
        self.net = net
        self.name = spec.name
        self.eps = float(eps)
        self._taps = frozenset(spec.taps)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)

        # Backbone: torchvision's architecture (built on the meta device: no random init, no download),
        # cut after the last tap, then filled from the local file.
        backbone_path = resolve_weights_file(
            backbone_weights,
            what=spec.what,
            filename=spec.filename,
            config_key="perceptual.backbone_weights",
            env_var=spec.env_var,
            source_url=spec.url,
        )
        with torch.device("meta"):
            features = cast(nn.Sequential, spec.build(weights=None).features)[: max(spec.taps) + 1]
        features.load_state_dict(_load_backbone_features(backbone_path, features, spec), strict=True, assign=True)
        self.features = features

        # lin layers: 1x1 convs C_l -> 1 without bias (Eq. 1's w_l).
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in spec.channels)
        lin_path = resolve_weights_file(
            lin_weights if lin_weights not in (None, "") else lpips_package_lin_weights(net),
            what=f"LPIPS v0.1 lin-layer weights for {net} (shipped in the `lpips` pip package)",
            filename=f"{net}.pth",
            config_key="perceptual.lin_weights",
            source_url=LIN_WEIGHTS_URL.format(net=net),
            search_torch_hub=False,
        )
        self.lins.load_state_dict(_load_lin_weights(lin_path, len(spec.channels)), strict=True)
        self.backbone_file = str(backbone_path)
        self.lin_file = str(lin_path)

        self._freeze()
        self._register_no_checkpoint_hooks()

    def features_at_taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Backbone activations at the LPIPS taps for ImageNet-scaled input (N, 3, H, W)."""
        out = []
        h = x
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self._taps:
                out.append(h)  # (N, C_l, H_l, W_l)
        return out

    def _distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        xy = (torch.cat([x, y], dim=0) - self.shift) / self.scale  # (2B, 3, H, W), ScalingLayer
        d = x.new_zeros(b)
        for f, lin in zip(self.features_at_taps(xy), self.lins):
            f = _normalize_channels(f, self.eps)  # (2B, C_l, H_l, W_l)
            diff = (f[:b] - f[b:]).square()  # (B, C_l, H_l, W_l)
            d = d + lin(diff).mean(dim=(1, 2, 3))  # (B,1,H_l,W_l) -> (B,): spatial average, Eq. 1
        return d

    def extra_repr(self) -> str:
        return f"name={self.name}, backbone_file={self.backbone_file}, lin_file={self.lin_file}"


def _torch_load(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise CheckpointError(f"{what}: cannot read {path} with torch.load(weights_only=True): {e}") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{what}: {path} does not hold a state_dict (got {type(sd).__name__})")
    return sd


def _load_backbone_features(path: Path, features: nn.Module, spec: _Backbone) -> dict[str, torch.Tensor]:
    """``features.*`` tensors of a torchvision state_dict, keyed relative to ``features``."""
    sd = _torch_load(path, spec.what)
    out = {k[len("features.") :]: v for k, v in sd.items() if k.startswith("features.")}
    expected = dict(features.state_dict())  # meta tensors: names and shapes only
    missing = sorted(set(expected) - set(out))
    wrong = sorted(k for k in expected if k in out and tuple(out[k].shape) != tuple(expected[k].shape))
    if missing or wrong:
        raise CheckpointError(
            f"{spec.what}: {path} is not a torchvision {spec.filename} state_dict "
            f"(missing features.{missing[:3]}, wrong shapes {wrong[:3]}). Point perceptual.backbone_weights "
            f"(or ${spec.env_var}) at the file from {spec.url}."
        )
    # Only the tapped part, cloned so the rest of the file (e.g. VGG's 500 MB classifier) is freed.
    return {k: out[k].detach().clone().float() for k in expected}


def _load_lin_weights(path: Path, n: int) -> dict[str, torch.Tensor]:
    """LPIPS lin weights, from the ``lpips`` format (``lin{k}.model.1.weight``) or ours (``{k}.weight``)."""
    sd = _torch_load(path, "LPIPS lin-layer weights")
    out = {}
    for k in range(n):
        for key in (f"lin{k}.model.1.weight", f"lins.{k}.weight", f"{k}.weight"):
            if key in sd:
                out[f"{k}.weight"] = sd[key].float()
                break
        else:
            raise CheckpointError(
                f"LPIPS lin-layer weights: {path} has no 'lin{k}.model.1.weight'; is it an LPIPS v0.1 file?"
            )
    return out


# ------------------------------------------------------------------------------------------- none
class NoPerceptual(nn.Module):
    """``perceptual=none``: a zero distance, so the loss is pure pixel reconstruction (+ GAN)."""

    name = "none"
    measures_distance = False  # nothing to report as LPIPS

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], device=x.device, dtype=torch.float32)  # (B,)


# ------------------------------------------------------------------------------ shift-tolerant LPIPS
STLPIPS_INSTALL = "pip install stlpips-pytorch==0.0.2 torchsummary ipython"


class ShiftTolerantLPIPS(_FrozenPerceptual):
    """Shift-tolerant LPIPS (Ghildyal & Liu, ECCV 2022) from the optional ``stlpips-pytorch`` package.

    Needs no ImageNet file: the package ships complete networks (backbone + lin layers) trained from
    scratch with anti-aliased, shift-tolerant backbones. Its values are on a different scale than
    LPIPS-VGG, so do not compare numbers across the two or reuse LPIPS loss weights blindly.

    The package imports IPython and torchsummary without declaring them; install all three
    (``pip install stlpips-pytorch torchsummary ipython``).

    Args:
        net: "alex" or "vgg".
        weights: a local copy of ``{net}_shift_tolerant.pth``; None: the file inside the package.
    """

    _NAMES = {"alex": "stlpips-alexnet", "vgg": "stlpips-vgg16"}

    def __init__(self, net: str = "alex", weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        if net not in self._NAMES:
            raise ConfigError(
                f"perceptual.net={net!r} is not supported by ShiftTolerantLPIPS; use one of {sorted(self._NAMES)}"
            )
        try:
            from stlpips_pytorch import stlpips
        except ImportError as e:
            raise ConfigError(
                f"perceptual=stlpips needs the optional package stlpips-pytorch, which also imports IPython and "
                f"torchsummary without declaring them: `{STLPIPS_INSTALL}` (import failed: {e}). "
                "Or choose perceptual=lpips_vgg (needs the VGG16 file) or perceptual=none."
            ) from e
        self.name = self._NAMES[net]
        self.net = net
        package_file = Path(stlpips.__file__).parent / "weights" / "vST0.0" / f"{net}_shift_tolerant.pth"
        path = resolve_weights_file(
            weights if weights not in (None, "") else package_file,
            what=f"shift-tolerant LPIPS ({net}) network (shipped in stlpips-pytorch)",
            filename=f"{net}_shift_tolerant.pth",
            config_key="perceptual.weights",
            search_torch_hub=False,
        )
        # pretrained=False: build only (their loader uses strict=False); we load and check ourselves.
        model = stlpips.LPIPS(net=net, variant="shift_tolerant", pretrained=False, verbose=False)
        sd = _torch_load(path, "shift-tolerant LPIPS")
        result = model.load_state_dict(sd, strict=False)
        # `lins.k` are aliases of `link` in their module; anything else missing means a wrong file.
        missing = [k for k in result.missing_keys if not k.startswith("lins.")]
        if missing or result.unexpected_keys:
            raise CheckpointError(
                f"shift-tolerant LPIPS: {path} does not match the {net} network "
                f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})"
            )
        self.model = model
        self.weights_file = str(path)
        self._freeze()
        self._register_no_checkpoint_hooks()

    def _distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model(x, y).reshape(x.shape[0])  # (B,1,1,1) -> (B,)
