"""Classifier-free guidance (Ho & Salimans 2022, Eq. 6): ``out = out_u + s (out_c - out_u)``.

Applied to **all** channels of the prediction (DiT guides only the first 3 channels, a trap with
4-channel latents). Every prediction type here (eps, x0, v, velocity) is affine in (x0_hat, eps_hat) at
fixed x_t, and guidance is an affine combination with weights summing to 1, so guiding the raw
prediction equals guiding eps and converting.

With a learned variance (2C output channels) the prediction half is guided and the *conditional* variance
half is kept (as GLIDE/DiT do).

The wrapped object is a plain ``model_fn(x_t, t)`` that any sampler accepts.
"""

from __future__ import annotations

from typing import Callable

import torch

from latentgen.conditioning.base import Conditioning
from latentgen.errors import ConfigError

__all__ = ["classifier_free_guidance", "CFGModelFn"]

Denoise = Callable[[torch.Tensor, torch.Tensor, Conditioning | None], torch.Tensor]


def classifier_free_guidance(out_uncond: torch.Tensor, out_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """eps_u + s (eps_c - eps_u) on every channel (Ho & Salimans 2022, Eq. 6 with w = s - 1)."""
    return out_uncond + scale * (out_cond - out_uncond)


class CFGModelFn:
    """``model_fn(x, t)`` that runs ``denoise(x, t, cond)`` with classifier-free guidance.

    Args:
        denoise: the denoiser, ``denoise(x_t (B,C,H,W), t (B,), cond) -> (B, C[*2], H, W)``.
        cond: the conditioning of the B samples.
        uncond: the null conditioning of the same B samples (``conditioner.null(batch)``).
        scale: guidance scale s. 1 -> the conditional model only (one forward); 0 -> the unconditional
            model only (one forward); otherwise one batched forward of [uncond, cond] (2B).
        learn_variance: the output has 2C channels (prediction, variance): guide the first half only.
    """

    def __init__(
        self, denoise: Denoise, cond: Conditioning, uncond: Conditioning, scale: float, learn_variance: bool = False
    ) -> None:
        self.denoise, self.cond, self.uncond = denoise, cond, uncond
        self.scale, self.learn_variance = float(scale), bool(learn_variance)
        self._both = None if self.scale in (0.0, 1.0) else Conditioning.cat(uncond, cond)  # (2B, ...) fields

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.scale == 1.0:
            return self.denoise(x, t, self.cond)
        if self.scale == 0.0:
            return self.denoise(x, t, self.uncond)
        out = self.denoise(torch.cat([x, x]), torch.cat([t, t]), self._both)  # (2B, C', H, W)
        out_u, out_c = out.chunk(2, dim=0)  # (B, C', H, W) each
        if not self.learn_variance:
            return classifier_free_guidance(out_u, out_c, self.scale)
        if out.shape[1] % 2:
            raise ConfigError(f"CFGModelFn(learn_variance=True) got {out.shape[1]} output channels (odd)")
        pred_u, _ = out_u.chunk(2, dim=1)  # (B, C, H, W)
        pred_c, var_c = out_c.chunk(2, dim=1)
        return torch.cat([classifier_free_guidance(pred_u, pred_c, self.scale), var_c], dim=1)  # (B, 2C, H, W)
