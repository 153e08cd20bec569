"""Progressive distillation (Salimans & Ho, ICLR 2022): a student that takes one DDIM step where its teacher
takes two.

Training step (Alg. 2): encode a data batch, draw a student step ``i`` uniformly from ``0 .. N-1`` on the
student's grid of ``student_steps = N`` steps (``t_i > t_{i+1}``), noise the latents to ``x_{t_i}``, let the
guided teacher take two DDIM steps ``t_i -> t' -> t_{i+1}`` (``t'`` the midpoint on the teacher's grid of
2N steps), and regress the student's prediction onto the target that lands there in one step
(:func:`~latentgen.generative.progressive_distillation.progressive_target`), in the student's own prediction
space (eps / x0 / v / velocity). Halving again = running the stage with this student as the teacher.

The student samples with ``sampler=ddim sampler.steps=N`` (or any sampler at any step count; it is a
latent model like any other).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from latentgen.conditioning.base import Conditioning
from latentgen.errors import ConfigError
from latentgen.generative.progressive_distillation import implied_noise, progressive_target
from latentgen.generative.time_grids import Spacing, resolve_spacing
from latentgen.randomness import BatchRandomness
from latentgen.systems.student import StudentSystem


class ProgressiveDistillationSystem(StudentSystem):
    kind = "progressive_distillation"

    def __init__(self, *args: Any, student_steps: int = 4, spacing: str | Spacing = "trailing", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if int(student_steps) < 1:
            raise ConfigError(f"distill.student_steps={student_steps} must be >= 1")
        self.student_steps = int(student_steps)
        schedule = self.objective.schedule
        spacing = resolve_spacing(spacing)
        self.register_buffer("t_student", spacing.grid(schedule, self.student_steps).float(), persistent=False)
        self.register_buffer("t_teacher", spacing.grid(schedule, 2 * self.student_steps).float(), persistent=False)

    def times(self, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(t_i, t', t_{i+1}) (B,) each for student steps ``i`` (B,) int64."""
        return self.t_student[i], self.t_teacher[2 * i + 1], self.t_student[i + 1]

    def step_loss(self, nets: nn.ModuleDict, batch: dict[str, Any], rng: BatchRandomness) -> tuple[torch.Tensor, dict]:
        fs = self.first_stage
        conditioner, denoiser = nets["conditioner"], nets["denoiser"]
        with torch.no_grad():
            h = batch["latent_raw"] if "latent_raw" in batch else fs.encode_raw(batch["image"])
            shape = tuple(self.latent_shape) if self.latent_shape is not None else (fs.latent_channels, *h.shape[2:])
            conditioner.draw_drop_mask(rng)  # keeps the order of draws; the student never drops its condition
            _, eps = self.objective.draw(rng, shape)  # (B, C, h, w); t comes from the student's grid instead
            i = rng.draw(lambda n, g, d: torch.randint(0, self.student_steps, (n,), generator=g, device=d))  # (B,)
            z = fs.latent_from_raw(h, rng if self.sample_posterior and self.training else None)  # (B, C, h, w)
            t, t_mid, t_next = self.times(i.to(self.t_student.device))
            schedule, prediction = self.objective.schedule, self.objective.prediction
            s = schedule(t).reshape_like(z)
            x_t = s.alpha_t * z + s.sigma_t * eps  # (B, C, h, w)
            x0_target = progressive_target(self.teacher.x0_fn(batch), schedule, x_t, t, t_mid, t_next)
            target = prediction.target(x0_target, implied_noise(x0_target, x_t, s), s)  # the student's space
        cond: Conditioning = conditioner.condition(batch, None, rng)
        pred, _ = self.objective.model_outputs(denoiser(x_t, t, cond))
        mse = ((pred.float() - target) ** 2).mean(dim=tuple(range(1, z.ndim)))  # (B,)
        loss = mse.mean()
        return loss, {"loss": loss.detach(), "mse": loss.detach()}
