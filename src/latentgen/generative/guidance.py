"""Classifier-free guidance (Ho & Salimans 2022, Eq. 6): ``out = out_u + s (out_c - out_u)``.

Applied to **all** channels of the prediction (DiT guides only the first 3 channels, a trap with
4-channel latents). Every prediction type here (eps, x0, v, velocity) is affine in (x0_hat, eps_hat) at
fixed x_t, and guidance is an affine combination with weights summing to 1, so guiding the raw
prediction equals guiding eps and converting.

With a learned variance (2C output channels) the prediction half is guided and the *conditional* variance
half is kept (as GLIDE/DiT do).

The wrapped object is a plain ``model_fn(x_t, t)`` that any sampler accepts.

Options of :class:`CFGModelFn`:

- **Negative prompt**: ``uncond`` may be any conditioning, e.g. the text conditioning of a negative prompt
  instead of the null condition: guidance then pushes away from it.
- **Guidance rescale** (Lin et al. 2023, §3.4, Eq. 15-16), phi = ``rescale``:
  ``out_r = out_cfg * std(out_c) / std(out_cfg)`` (std over all but the batch dimension), then
  ``out = phi out_r + (1 - phi) out_cfg``. It is applied to the raw prediction (as diffusers does on its
  noise prediction); the paper states it for the x0 prediction of a v-prediction model.
- **Guidance interval** (Kynkaanniemi et al. 2024): ``interval = (t_lo, t_hi)`` guides only samples whose
  t lies in [t_lo, t_hi] and returns the conditional prediction elsewhere.
"""

from __future__ import annotations

from typing import Callable

import torch

from latentgen.conditioning.base import Conditioning
from latentgen.errors import ConfigError

__all__ = ["classifier_free_guidance", "rescale_guidance", "CFGModelFn"]

Denoise = Callable[[torch.Tensor, torch.Tensor, Conditioning | None], torch.Tensor]


def classifier_free_guidance(out_uncond: torch.Tensor, out_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """eps_u + s (eps_c - eps_u) on every channel (Ho & Salimans 2022, Eq. 6 with w = s - 1)."""
    return out_uncond + scale * (out_cond - out_uncond)


def rescale_guidance(out_guided: torch.Tensor, out_cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Lin et al. 2023, Eq. 15-16: match the per-sample std of the guided prediction to the conditional one,
    mixed with weight phi."""
    if phi == 0.0:
        return out_guided
    dims = list(range(1, out_guided.dim()))
    std_c = out_cond.std(dim=dims, keepdim=True)  # (B, 1, 1, 1)
    std_g = out_guided.std(dim=dims, keepdim=True)
    rescaled = out_guided * (std_c / std_g.clamp_min(1e-12))  # Eq. 15
    return phi * rescaled + (1.0 - phi) * out_guided  # Eq. 16


class CFGModelFn:
    """``model_fn(x, t)`` that runs ``denoise(x, t, cond)`` with classifier-free guidance.

    Args:
        denoise: the denoiser, ``denoise(x_t (B,C,H,W), t (B,), cond) -> (B, C[*2], H, W)``.
        cond: the conditioning of the B samples.
        uncond: the null conditioning of the same B samples (``conditioner.null(batch)``).
        scale: guidance scale s. 1 -> the conditional model only (one forward); 0 -> the unconditional
            model only (one forward); otherwise one batched forward of [uncond, cond] (2B).
        learn_variance: the output has 2C channels (prediction, variance): guide the first half only.
        rescale: phi of the guidance rescale (0 = none; see the module docstring).
        interval: (t_lo, t_hi): guide only where t is in this interval, conditional prediction elsewhere.
    """

    def __init__(
        self,
        denoise: Denoise,
        cond: Conditioning,
        uncond: Conditioning,
        scale: float,
        learn_variance: bool = False,
        rescale: float = 0.0,
        interval: tuple[float, float] | None = None,
    ) -> None:
        self.denoise, self.cond, self.uncond = denoise, cond, uncond
        self.scale, self.learn_variance = float(scale), bool(learn_variance)
        self.rescale = float(rescale)
        if not 0.0 <= self.rescale <= 1.0:
            raise ConfigError(f"guidance rescale phi={rescale} must be in [0, 1]")
        self.interval = None if interval is None else (float(interval[0]), float(interval[1]))
        if self.interval is not None and not self.interval[0] <= self.interval[1]:
            raise ConfigError(f"guidance interval {interval} must be (t_lo, t_hi) with t_lo <= t_hi")
        self._both = None if self.scale in (0.0, 1.0) else Conditioning.cat(uncond, cond)  # (2B, ...) fields

    def _guide(self, out_u: torch.Tensor, out_c: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = rescale_guidance(classifier_free_guidance(out_u, out_c, self.scale), out_c, self.rescale)
        if self.interval is not None:
            inside = (t >= self.interval[0]) & (t <= self.interval[1])  # (B,)
            out = torch.where(inside.view(-1, *([1] * (out.dim() - 1))), out, out_c)
        return out

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.scale == 1.0:
            return self.denoise(x, t, self.cond)
        if self.scale == 0.0:
            return self.denoise(x, t, self.uncond)
        out = self.denoise(torch.cat([x, x]), torch.cat([t, t]), self._both)  # (2B, C', H, W)
        out_u, out_c = out.chunk(2, dim=0)  # (B, C', H, W) each
        if not self.learn_variance:
            return self._guide(out_u, out_c, t)
        if out.shape[1] % 2:
            raise ConfigError(f"CFGModelFn(learn_variance=True) got {out.shape[1]} output channels (odd)")
        pred_u, _ = out_u.chunk(2, dim=1)  # (B, C, H, W)
        pred_c, var_c = out_c.chunk(2, dim=1)
        return torch.cat([self._guide(pred_u, pred_c, t), var_c], dim=1)  # (B, 2C, H, W)
