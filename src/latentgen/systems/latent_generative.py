"""The second-stage system: a denoiser trained in the latent space of a frozen first stage.

Diffusion (DDPM/DDIM, eps/x0/v, learned variance) and flow matching (rectified flow) are the same
system: the ``objective`` says how to noise latents and what the network predicts, the ``sampler``
how to integrate back. The EMA copy of the trainable parts (denoiser + conditioner) is what
samples and evaluations use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric

from latentgen.autoencoders.autoencoder import Autoencoder
from latentgen.conditioning.base import Conditioner, Conditioning
from latentgen.errors import ConfigError
from latentgen.generative.guidance import CFGModelFn
from latentgen.systems.common import check_finite
from latentgen.systems.ema import EMA


class LatentGenerativeSystem(L.LightningModule):
    kind = "latent_generative"

    def __init__(
        self,
        first_stage: Autoencoder,
        denoiser: nn.Module,
        objective,
        sampler,
        conditioner: Conditioner,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr_schedule: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        ema_decay: float = 0.9999,
        ema_warmup: bool = True,
        guidance_scale: float = 1.0,
        sample_posterior: bool = True,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        self.first_stage = first_stage.eval().requires_grad_(False)
        self.denoiser = denoiser
        self.conditioner = conditioner
        # Conditioners that encode images with the first stage (inpainting: the masked image)
        # receive it here; it is not a submodule of theirs, so it is neither trained nor saved twice.
        if hasattr(conditioner, "set_first_stage"):
            conditioner.set_first_stage(first_stage)
        self.objective = objective
        self.sampler = sampler
        self.optimizer_factory = optimizer
        self.lr_schedule_factory = lr_schedule
        self.guidance_scale = float(guidance_scale)
        self.sample_posterior = sample_posterior
        # (C, h, w) of the latents the denoiser works on; None until known (set from the data).
        self.latent_shape = None if image_size is None else tuple(first_stage.latent_shape(int(image_size)))
        self.check_guidance(self.guidance_scale)
        # EMA of everything that is trained (never of the frozen first stage).
        self.ema = EMA(self.trainable, decay=ema_decay, warmup=ema_warmup)
        self.val_loss = MeanMetric()
        self.val_loss_ema = MeanMetric()

    @property
    def trainable(self) -> nn.ModuleDict:
        return nn.ModuleDict({"denoiser": self.denoiser, "conditioner": self.conditioner})

    def check_guidance(self, scale: float) -> None:
        if scale != 1.0 and not self.conditioner.is_conditional:
            raise ConfigError(
                f"guidance.scale={scale} needs a conditional model, but this one is unconditional "
                "(conditioner=none). Use guidance.scale=1.0, or train with conditioner=class."
            )

    def train(self, mode: bool = True) -> LatentGenerativeSystem:
        super().train(mode)
        self.first_stage.eval()  # frozen: dropout/norm layers stay in inference mode
        return self

    # ------------------------------------------------------------------ latents
    @torch.no_grad()
    def encode(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents of the batch's images, (B, C, h, w) — from the cache when the batch has them."""
        sample = self.sample_posterior and self.training
        if "latent_raw" in batch:  # from the latent cache: the regularizer's input, e.g. KL mean+logvar
            z = self.first_stage.regularizer.latent(batch["latent_raw"], sample=sample, generator=generator)
            return self.first_stage.scale_latent(z)
        return self.first_stage.encode_scaled(batch["image"], sample=sample, generator=generator)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.first_stage.decode_scaled(z).clamp(-1, 1)

    def _loss(
        self, nets: nn.ModuleDict, batch: dict[str, Any], z: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict]:
        cond = nets["conditioner"](batch, generator=generator)
        denoiser = nets["denoiser"]
        return self.objective.loss(lambda x_t, t: denoiser(x_t, t, cond), z, generator=generator)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        z = self.encode(batch)
        loss, log = self._loss(self.trainable, batch, z)
        check_finite(loss, what="latent model loss", step=self.global_step, batch_idx=batch_idx)
        self.log("train/loss", loss.detach(), prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in log.items() if k != "loss"})
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Called after the optimizer step (and only after a real step under gradient accumulation).
        if (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0:
            self.ema.update(self.trainable)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # Fixed noise and times per validation batch, so val losses are comparable across steps
        # (and the training RNG stream is not touched).
        z = self.encode(batch)
        seed = 1000 + batch_idx
        loss, _ = self._loss(self.trainable, batch, z, torch.Generator().manual_seed(seed))
        loss_ema, _ = self._loss(self.ema.shadow, batch, z, torch.Generator().manual_seed(seed))
        self.val_loss.update(loss)
        self.val_loss_ema.update(loss_ema)
        self.log("val/loss", self.val_loss, prog_bar=True)
        self.log("val/loss_ema", self.val_loss_ema)

    def configure_optimizers(self):
        params = [p for p in self.trainable.parameters() if p.requires_grad]
        opt = self.optimizer_factory(params)
        if self.lr_schedule_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.lr_schedule_factory(opt), "interval": "step"}}

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        batch: dict[str, Any],
        *,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        use_ema: bool = True,
        sampler=None,
        return_latents: bool = False,
    ) -> torch.Tensor:
        """Generate one image per sample of ``batch`` (its labels/captions/concat inputs condition them).

        Returns images in [-1, 1], (B, C, H, W) (or latents when ``return_latents``).
        """
        scale = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        self.check_guidance(scale)
        nets = self.ema.shadow if use_ema else self.trainable
        sampler = sampler or self.sampler
        conditioner, denoiser = nets["conditioner"], nets["denoiser"]
        was_training = conditioner.training
        conditioner.eval()
        try:
            cond = conditioner(batch)
            uncond = conditioner.null(batch) if scale != 1.0 else Conditioning()
        finally:
            conditioner.train(was_training)
        b = _batch_size(batch)
        if noise is None:
            if self.latent_shape is None:
                raise ConfigError("the latent shape is unknown: build the system with image_size=${data.resolution}")
            noise = torch.randn((b, *self.latent_shape), generator=generator, device="cpu").to(self.device)
        model_fn = CFGModelFn(denoiser, cond, uncond, scale, learn_variance=self.objective.learn_variance)
        z = sampler(model_fn, self.objective, noise, steps=steps, generator=generator)
        return z if return_latents else self.decode(z)

    @torch.no_grad()
    def image_grid(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        """Samples for a fixed batch (its labels/captions) from fixed noise, with the EMA weights."""
        batch = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        return self.sample(batch, generator=generator)


def _batch_size(batch: dict[str, Any]) -> int:
    from latentgen.conditioning.base import batch_size_of

    return batch_size_of(batch)

