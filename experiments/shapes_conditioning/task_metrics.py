"""Metrics of the conditional shapes tasks (evaluate_tasks.py), per sample, on [-1, 1] images (B, C, H, W).

- Inpainting: L1 inside the mask (how close the fill is to the original there), L1 / PSNR outside
  it (how faithfully the known pixels survive the model), and optionally LPIPS of the composite
  (known pixels pasted back) against the original, with any ``(x, y) -> (B,)`` LPIPS callable.
- Super-resolution: PSNR and SSIM against the high-res image (torchmetrics functional SSIM, Gaussian
  window 11 / sigma 1.5, on [0, 1]).
Text-to-image alignment lives in :mod:`latentgen.metrics.attribute_classifier`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from latentgen.errors import DataError


def _unit(x: torch.Tensor) -> torch.Tensor:
    return ((x.float() + 1) / 2).clamp(0, 1)  # [-1, 1] -> [0, 1]


def _check(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.dim() != 4:
        raise DataError(
            f"task metrics need two (B, C, H, W) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def region_l1(pred: torch.Tensor, target: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """(B,) mean |pred - target| on [0, 1] over the pixels where ``region`` (B, 1, H, W) is 1 (nan if none)."""
    _check(pred, target)
    diff = (_unit(pred) - _unit(target)).abs().mean(1, keepdim=True)  # (B, 1, H, W) mean over channels
    area = region.flatten(1).sum(1)  # (B,)
    return (diff * region).flatten(1).sum(1) / area.where(area > 0, torch.full_like(area, float("nan")))


def psnr(pred: torch.Tensor, target: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) PSNR in dB on [0, 1] (optionally over ``region`` only); MSE floored at 1e-10."""
    _check(pred, target)
    sq = (_unit(pred) - _unit(target)).pow(2).mean(1, keepdim=True)  # (B, 1, H, W)
    if region is None:
        mse = sq.flatten(1).mean(1)
    else:
        mse = (sq * region).flatten(1).sum(1) / region.flatten(1).sum(1).clamp_min(1.0)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) SSIM on [0, 1] images (Gaussian window 11, sigma 1.5)."""
    _check(pred, target)
    return structural_similarity_index_measure(
        _unit(pred), _unit(target), gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0, reduction="none"
    ).reshape(-1)


def inpainting_metrics(
    samples: torch.Tensor,
    images: torch.Tensor,
    mask: torch.Tensor,
    lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Means over the batch; ``mask`` (B, 1, H, W) is 1 on the filled (missing) region."""
    keep = 1.0 - mask
    out = {
        "masked_l1": float(region_l1(samples, images, mask).nanmean()),
        "unmasked_l1": float(region_l1(samples, images, keep).nanmean()),
        "unmasked_psnr": float(psnr(samples, images, keep).mean()),
        "mask_fraction": float(mask.mean()),
    }
    if lpips is not None:
        composite = mask * samples + keep * images
        out["lpips_composite"] = float(lpips(composite, images).reshape(-1).mean())
    return out


def superres_metrics(
    samples: torch.Tensor,
    high_res: torch.Tensor,
    lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """PSNR (dB) and SSIM (and LPIPS with an ``(x, y) -> (B,)`` callable) against the high-res images (means)."""
    out = {"psnr": float(psnr(samples, high_res).mean()), "ssim": float(ssim(samples, high_res).mean())}
    if lpips is not None:
        out["lpips"] = float(lpips(samples, high_res).reshape(-1).mean())
    return out
