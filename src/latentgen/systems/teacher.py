"""The frozen teacher of a few-step student: a trained latent model seen through its EMA weights and guidance.

A student (reflow, progressive distillation) learns what the teacher's *guided* sampler does: the teacher's
prediction is ``CFGModelFn`` around its EMA denoiser at a fixed guidance scale, so the student learns the
guided model and samples with one network pass per step (no unconditional pass; guided distillation, Meng et
al., CVPR 2023, §3.1 with a fixed w). The teacher is not a submodule of the student: it is neither trained nor
saved in the student's checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch

from latentgen.conditioning.base import Conditioning
from latentgen.data.latent_cache import module_digest
from latentgen.generative.guidance import CFGModelFn
from latentgen.generative.samplers import Sampler
from latentgen.systems.latent_generative import LatentGenerativeSystem


class Teacher:
    """``system``: the trained latent model (eval mode); ``guidance_scale``: the fixed scale the student learns."""

    def __init__(self, system: LatentGenerativeSystem, guidance_scale: float) -> None:
        self.system = system.eval().requires_grad_(False)
        self.guidance_scale = float(guidance_scale)
        system.check_guidance(self.guidance_scale)

    @property
    def parameterization(self):
        return self.system.objective.parameterization

    def to(self, device: torch.device | str) -> Teacher:
        self.system.to(device)
        return self

    def digest(self) -> str:
        """SHA-256 of the teacher's weights (EMA, first stage and all): what its samples depend on."""
        return module_digest(self.system)

    @torch.no_grad()
    def model_fn(self, batch: dict[str, Any]) -> CFGModelFn:
        """``model_fn(x_t, t) -> raw output`` of the guided EMA teacher for the samples of ``batch``."""
        nets = self.system.ema.shadow
        conditioner = nets["conditioner"].eval()
        cond = conditioner(batch)
        uncond = conditioner.null(batch) if self.guidance_scale != 1.0 else Conditioning()
        learn_variance = self.parameterization.learn_variance
        return CFGModelFn(nets["denoiser"], cond, uncond, self.guidance_scale, learn_variance=learn_variance)

    def x0_fn(self, batch: dict[str, Any]):
        """``x0_fn(x_t (B, C, h, w), t (B,)) -> x0_hat``: the guided teacher's data prediction."""
        model_fn, param = self.model_fn(batch), self.parameterization

        @torch.no_grad()
        def x0(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            pred, _ = param.model_outputs(model_fn(x_t, t))
            s = param.schedule(t).reshape_like(x_t)
            return param.prediction.to_x0_eps(pred.float(), x_t, s)[0]

        return x0

    @torch.no_grad()
    def solve(self, noise: torch.Tensor, batch: dict[str, Any], sampler: Sampler, steps: int | None) -> torch.Tensor:
        """The teacher's ODE sample (scaled latents, (B, C, h, w)) from ``noise`` with ``sampler``."""
        device = self.system.device
        batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        return sampler(self.model_fn(batch), self.parameterization, noise.to(device), steps=steps)
