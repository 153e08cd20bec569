"""Reflow: a rectified-flow student trained on its teacher's couplings (Liu et al., ICLR 2023, §2.3).

The teacher's ODE maps noise ``x_1`` to a sample ``x_0``; the student regresses the straight-line velocity
of those pairs,

    x_t = (1 - t) x_0 + t x_1,   loss = E || v(x_t, t) - (x_1 - x_0) ||^2        (Liu et al. Eq. 1 on (x_1, x_0))

which is the teacher's own objective with the pair's noise in place of independent noise. Couplings of an
ODE do not cross, so the new flow's paths are straighter and few Euler steps get close to the teacher's
many-step samples. ``one_step=true`` trains at t = 1 only: the distillation step after reflow (Liu et al.
§2.3, "distillation"), where one Euler step is the prediction of x_0 from x_1. Repeating the stage with the
student as teacher gives the k-rectified flow.

Batches come from :class:`~latentgen.data.reflow_pairs.ReflowPairs`: ``noise``, ``latent`` (the teacher's
sample, scaled latents) and ``label`` for a class-conditional teacher. The condition is never dropped: the
student learns the guided teacher at its fixed scale and samples with ``guidance_scale = 1``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from latentgen.errors import ConfigError
from latentgen.generative.predictions import VelocityPrediction
from latentgen.generative.schedules import RectifiedFlowPath
from latentgen.randomness import BatchRandomness
from latentgen.systems.student import StudentSystem


class ReflowSystem(StudentSystem):
    kind = "reflow"

    def __init__(self, *args: Any, one_step: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.one_step = bool(one_step)
        param = self.objective.parameterization
        if not isinstance(param.schedule, RectifiedFlowPath) or not isinstance(param.prediction, VelocityPrediction):
            raise ConfigError(
                f"model=reflow needs a rectified-flow teacher (objective=rectified_flow), got {self.objective!r}; "
                "distil a diffusion teacher with model=distill distill=progressive"
            )

    def step_loss(self, nets: nn.ModuleDict, batch: dict[str, Any], rng: BatchRandomness) -> tuple[torch.Tensor, dict]:
        """The rectified-flow loss on the pair ``(noise, latent)``; draws the conditioner's uniform (unused: no
        condition is dropped) and the objective's ``t`` (and noise, unused) in the usual order."""
        conditioner, denoiser = nets["conditioner"], nets["denoiser"]
        z, noise = batch["latent"].float(), batch["noise"].float()  # (B, C, h, w) each
        conditioner.draw_drop_mask(rng)  # keeps the order of draws; the student never drops its condition
        t, _ = self.objective.draw(rng, tuple(z.shape[1:]))  # (B,)
        if self.one_step:
            t = torch.ones_like(t)
        cond = conditioner.condition(batch, None, rng)
        return self.objective.loss(lambda x_t, t_: denoiser(x_t, t_, cond), z, t=t, noise=noise)
