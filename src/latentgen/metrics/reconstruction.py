"""Per-sample reconstruction metrics for autoencoders: PSNR, SSIM, LPIPS, reported as mean and std.

Conventions (inputs are the project's [-1, 1] float images, or uint8 in [0, 255]):

* Both images are mapped to [0, 1] (``(x + 1) / 2``, or ``x / 255`` for uint8) and clamped. With
  ``quantize=True`` they are first rounded to 8-bit levels, i.e. measured as saved PNGs would be.
* **PSNR** per sample on [0, 1] -- the same number as data range 2 on [-1, 1] or 255 on [0, 255]:
  ``PSNR = 10 log10(1 / MSE)``, MSE over (C, H, W). MSE is floored at 1e-10 (so identical images give
  100 dB, not inf, and the mean stays finite).
* **SSIM** per sample on [0, 1] (Wang et al. 2004, eq. 13): torchmetrics' functional SSIM with an 11x11
  Gaussian window (sigma 1.5), k1 = 0.01, k2 = 0.03, data range 1.
* **LPIPS** (Zhang et al. 2018): any callable ``(x, y) -> (B,)`` (or (B, 1, 1, 1)) on [-1, 1] images,
  e.g. ``latentgen.autoencoders.perceptual.LPIPS``. Optional.

:class:`ReconstructionMetrics` keeps the per-sample values in ``cat`` states (DDP-gathered) and reports
``<name>_mean`` and ``<name>_std`` (unbiased, N - 1) over all samples. rFID is FID between
reconstructions and originals with the same extractor machinery:
``GenerativeMetrics(extractor, metrics=["fid"])`` fed ``update(x, real=True)`` and ``update(x_rec, real=False)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torchmetrics import Metric
from torchmetrics.functional.image import structural_similarity_index_measure
from torchmetrics.utilities.data import dim_zero_cat

from latentgen.errors import DataError

__all__ = ["ReconstructionMetrics", "psnr_per_sample", "ssim_per_sample", "to_unit_range"]

_MSE_FLOOR = 1e-10


def to_unit_range(x: torch.Tensor, quantize: bool = False) -> torch.Tensor:
    """[-1, 1] float (or uint8) images -> float32 in [0, 1]; ``quantize`` rounds to 8-bit levels first."""
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.is_floating_point():
        raise DataError(f"images must be float in [-1, 1] or uint8, got dtype {x.dtype}")
    y = ((x.detach().float() + 1.0) / 2.0).clamp(0.0, 1.0)
    if quantize:
        y = (y * 255.0).round() / 255.0
    return y


def _check_pair(preds: torch.Tensor, target: torch.Tensor) -> None:
    if preds.shape != target.shape or preds.dim() != 4:
        raise DataError(
            "reconstructions and originals must both be (B, C, H, W); "
            f"got {tuple(preds.shape)} and {tuple(target.shape)}"
        )


def psnr_per_sample(preds: torch.Tensor, target: torch.Tensor, quantize: bool = False) -> torch.Tensor:
    """(B,) PSNR in dB on [0, 1] images (see the module docstring)."""
    _check_pair(preds, target)
    p, t = to_unit_range(preds, quantize), to_unit_range(target, quantize)
    mse = (p - t).pow(2).flatten(1).mean(dim=1).clamp_min(_MSE_FLOOR)  # (B,)
    return 10.0 * torch.log10(1.0 / mse)


def ssim_per_sample(preds: torch.Tensor, target: torch.Tensor, quantize: bool = False) -> torch.Tensor:
    """(B,) SSIM on [0, 1] images, Gaussian window 11 / sigma 1.5."""
    _check_pair(preds, target)
    p, t = to_unit_range(preds, quantize), to_unit_range(target, quantize)
    ssim = structural_similarity_index_measure(
        p, t, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0, reduction="none"
    )  # a tensor: no return_full_image / return_contrast_sensitivity
    return cast(torch.Tensor, ssim).reshape(-1)  # (B,)


class ReconstructionMetrics(Metric):
    """PSNR / SSIM / (LPIPS) per sample, gathered over DDP ranks, reported as mean and std.

    Args:
        lpips: a callable ``(x, y) -> (B,)`` on [-1, 1] images, or ``None`` to skip LPIPS. It is kept
            out of ``state_dict`` and moved to the images' device on first use when it is a module.
        quantize: round images to 8-bit levels before PSNR/SSIM (LPIPS sees the same rounded images).
        **kwargs: passed to ``torchmetrics.Metric``.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    # States (add_state in __init__): per-sample values, concatenated across ranks when synced.
    psnr: list[torch.Tensor]
    ssim: list[torch.Tensor]
    lpips_values: list[torch.Tensor]
    lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None

    def __init__(self, lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 quantize: bool = False, **kwargs: Any) -> None:  # fmt: skip
        super().__init__(**kwargs)
        object.__setattr__(self, "lpips", lpips)  # not registered: no VGG weights in checkpoints
        self.quantize = quantize
        self.add_state("psnr", default=[], dist_reduce_fx="cat")
        self.add_state("ssim", default=[], dist_reduce_fx="cat")
        self.add_state("lpips_values", default=[], dist_reduce_fx="cat")

    @torch.no_grad()
    def update(self, reconstructions: torch.Tensor, originals: torch.Tensor) -> None:  # type: ignore[override]
        self.psnr.append(psnr_per_sample(reconstructions, originals, self.quantize))
        self.ssim.append(ssim_per_sample(reconstructions, originals, self.quantize))
        if self.lpips is not None:
            x = to_unit_range(reconstructions, self.quantize) * 2 - 1  # (B, C, H, W) in [-1, 1]
            y = to_unit_range(originals, self.quantize) * 2 - 1
            if isinstance(self.lpips, torch.nn.Module):
                first = next(self.lpips.parameters(), None)
                if first is not None and first.device != x.device:
                    self.lpips.to(x.device)
            d = torch.as_tensor(self.lpips(x, y)).float().reshape(x.shape[0], -1)  # (B, 1) or (B,1,1,1) -> (B, 1)
            if d.shape[1] != 1:
                raise DataError(f"the LPIPS callable must return one distance per sample, got shape {tuple(d.shape)}")
            self.lpips_values.append(d[:, 0])

    def compute(self) -> dict[str, float]:
        if isinstance(self.psnr, list) and len(self.psnr) == 0:
            raise DataError("ReconstructionMetrics.compute(): no samples were added")
        out: dict[str, float] = {}
        for name, state in (("psnr", self.psnr), ("ssim", self.ssim), ("lpips", self.lpips_values)):
            if isinstance(state, list) and len(state) == 0:
                continue
            v = dim_zero_cat(state).double()  # (N,)
            if v.numel() == 0:  # no LPIPS: after a DDP sync the empty list arrives as an empty tensor
                continue
            out[f"{name}_mean"] = float(v.mean())
            out[f"{name}_std"] = float(v.std()) if v.numel() > 1 else 0.0
            if name == "psnr":
                out["num_samples"] = float(v.numel())
        return out
