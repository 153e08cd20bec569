"""What every few-step student shares: it starts from its teacher's EMA weights and keeps the teacher beside it.

A student is a :class:`~latentgen.systems.latent_generative.LatentGenerativeSystem` (same denoiser, conditioner,
objective and first stage as its teacher), so its checkpoint samples with ``evaluate.py`` like any latent
model; the teacher is attached for training only (:meth:`attach_teacher`) and is not part of its state.
"""

from __future__ import annotations

from latentgen.errors import ConfigError
from latentgen.systems.latent_generative import LatentGenerativeSystem
from latentgen.systems.teacher import Teacher


class StudentSystem(LatentGenerativeSystem):
    kind = "student"

    _teacher: Teacher | None = None

    def attach_teacher(self, teacher: Teacher, *, init_from_teacher: bool = True) -> None:
        """Keep ``teacher`` for training; with ``init_from_teacher`` start the trained parts and their EMA copy
        from the teacher's EMA weights (the student's first stage is the teacher's already)."""
        object.__setattr__(self, "_teacher", teacher)  # a plain attribute: not a submodule, not saved
        if init_from_teacher:
            ema = teacher.system.ema.shadow.state_dict()
            self.trainable.load_state_dict(ema)
            self.ema.shadow.load_state_dict(ema)

    @property
    def teacher(self) -> Teacher:
        if self._teacher is None:
            raise ConfigError(
                f"{type(self).__name__} trains against a teacher: run it with `python train.py model=... "
                "teacher.ckpt=<latent model checkpoint>` (evaluation needs none)"
            )
        return self._teacher

    def on_fit_start(self) -> None:
        if self._teacher is not None:
            self._teacher.to(self.device)

    def on_validation_start(self) -> None:
        if self._teacher is not None:
            self._teacher.to(self.device)
