"""The second-stage system: a denoiser trained in the latent space of a frozen first stage.

Diffusion (DDPM/DDIM, eps/x0/v, learned variance) and flow matching (rectified flow) are the same
system: the ``objective`` says how to noise latents and what the network predicts, the ``sampler``
how to integrate back. The EMA copy of the trainable parts (denoiser + conditioner) is what
samples and evaluations use.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchmetrics import MeanMetric

from latentgen.autoencoders.autoencoder import Autoencoder
from latentgen.conditioning.base import Conditioner, Conditioning, batch_device, batch_size_of
from latentgen.errors import ConfigError
from latentgen.generative.guidance import CFGModelFn
from latentgen.generative.objective import Objective
from latentgen.generative.samplers import Sampler
from latentgen.randomness import BatchRandomness
from latentgen.systems.common import check_finite, check_nonfinite_policy, finite_on_all_ranks
from latentgen.systems.denoiser_fit import check_denoiser_fits
from latentgen.systems.ema import EMA


class LatentGenerativeSystem(L.LightningModule):
    kind = "latent_generative"

    def __init__(
        self,
        first_stage: Autoencoder,
        denoiser: nn.Module,
        objective: Objective,
        sampler: Sampler,
        conditioner: Conditioner,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr_schedule: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        ema_decay: float = 0.9999,
        ema_warmup: bool = True,
        guidance_scale: float = 1.0,
        sample_posterior: bool = True,
        image_size: int | None = None,
        seed: int = 0,
        nonfinite: str = "raise",
        compile: bool = False,
    ) -> None:
        """``seed`` seeds the per-sample training noise (:mod:`latentgen.randomness`);
        ``nonfinite``: "raise" stops at a NaN/Inf loss, "skip" skips that optimizer step;
        ``compile``: ``torch.compile`` the denoiser for training (its state_dict keys do not change and
        the EMA copy stays an uncompiled module)."""
        super().__init__()
        self.first_stage = first_stage.eval().requires_grad_(False)
        self.denoiser = denoiser
        self.conditioner = conditioner
        # Conditioners that encode images with the first stage (inpainting: the masked image)
        # receive it here; it is not a submodule of theirs, so it is neither trained nor saved twice.
        if hasattr(conditioner, "set_first_stage"):
            conditioner.set_first_stage(first_stage)
        self.objective: Objective = objective
        self.sampler: Sampler = sampler
        self.optimizer_factory = optimizer
        self.lr_schedule_factory = lr_schedule
        self.guidance_scale = float(guidance_scale)
        self.sample_posterior = sample_posterior
        # (C, h, w) of the latents the denoiser works on; None until known (set from the data).
        self.latent_shape = None if image_size is None else tuple(first_stage.latent_shape(int(image_size)))
        check_denoiser_fits(first_stage, denoiser, conditioner, objective, image_size)
        self.check_guidance(self.guidance_scale)
        # EMA of everything that is trained (never of the frozen first stage).
        self.ema = EMA(self.trainable, decay=ema_decay, warmup=ema_warmup)
        self.seed = int(seed)
        self.nonfinite = check_nonfinite_policy(nonfinite)
        self.compile_denoiser = bool(compile)
        self.skipped_steps = 0
        self._skipped = False  # the last training batch was skipped (non-finite loss)
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
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.first_stage.decode_scaled(z).clamp(-1, 1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] -> the scaled latents the denoiser models (posterior mean)."""
        return self.first_stage.encode_scaled(images.to(self.device))

    def step_loss(self, nets: nn.ModuleDict, batch: dict[str, Any], rng: BatchRandomness) -> tuple[torch.Tensor, dict]:
        """The loss of one step of ``nets`` (the live ones or the EMA copy) on ``batch``: training and
        validation both take this path.

        Each owner draws its own numbers from ``rng``, in this order: the conditioner one uniform per sample
        (its CFG drop mask), the objective ``t``, ``eps`` and the offset noise, the first stage its posterior
        sample (in training, with ``sample_posterior``); random conditioning inputs (inpainting masks) come
        from a sub-stream of ``rng``.
        """
        fs = self.first_stage
        conditioner, denoiser = nets["conditioner"], nets["denoiser"]
        with torch.no_grad():
            h = batch["latent_raw"] if "latent_raw" in batch else fs.encode_raw(batch["image"])  # regularizer input
            shape = tuple(self.latent_shape) if self.latent_shape is not None else (fs.latent_channels, *h.shape[2:])
            drop = conditioner.draw_drop_mask(rng)  # (B,) per-sample CFG dropout, or None
            t, eps = self.objective.draw(rng, shape)  # (B,), (B, C, h, w)
            z = fs.latent_from_raw(h, rng if self.sample_posterior and self.training else None)  # (B, C, h, w)
        cond = conditioner.condition(batch, drop, rng)
        return self.objective.loss(lambda x_t, t_: denoiser(x_t, t_, cond), z, t=t, noise=eps)

    def step_randomness(self, batch: dict[str, Any], *, validation_batch: int | None = None) -> BatchRandomness:
        """The generator of this step for the global batch: seeded by (seed, batch count) in training, by
        the validation batch index in validation (the same noise at every validation). The noise of a sample
        depends only on that seed, its position in the global batch and the global batch size."""
        trainer = self._trainer
        world = trainer.world_size if trainer is not None else 1
        rank = self.global_rank  # contiguous sharding: rank r holds positions r*b .. r*b+b-1
        b = batch_size_of(batch)
        device = batch_device(batch)
        if validation_batch is not None:
            return BatchRandomness.for_validation(validation_batch, b, rank=rank, world_size=world, device=device)
        return BatchRandomness.for_step(self.seed, self._batch_count(), b, rank=rank, world_size=world, device=device)

    # ------------------------------------------------------------------ training
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.compile_denoiser and getattr(self.denoiser, "_compiled_call_impl", None) is None:
            # In place (nn.Module.compile): parameter names and the EMA's uncompiled copy are unchanged.
            # Static shapes: training shapes are fixed (a new batch size compiles one more graph), and
            # inductor's symbolic shapes failed on the mid-size UNet on CPU (torch 2.14).
            self.denoiser.compile(dynamic=False)

    def _batch_count(self) -> int:
        """Batches trained so far (not optimizer steps: micro-batches of an accumulation differ)."""
        trainer = self._trainer
        return int(trainer.fit_loop.total_batch_idx) if trainer is not None else int(self.global_step)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        loss, log = self.step_loss(self.trainable, batch, self.step_randomness(batch))
        if not finite_on_all_ranks(loss, self._trainer):
            if self.nonfinite == "raise":
                check_finite(loss, what="latent model loss", step=self.global_step, batch_idx=batch_idx, force=True)
            self.skipped_steps += 1
            self._skipped = True
            rank_zero_warn(
                f"latent model loss is not finite at global step {self.global_step}; skipped (nonfinite=skip)"
            )
            self.log("train/skipped_steps", float(self.skipped_steps))
            return None  # Lightning skips backward and the optimizer step
        self._skipped = False
        # The mean over ranks (each rank's loss is the mean of its equal share of the global batch), so a
        # DDP curve reads like the one-process curve of the same global batch.
        self.log("train/loss", loss.detach(), prog_bar=True, sync_dist=True)
        self.log_dict({f"train/{k}": v for k, v in log.items() if k != "loss"})
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # Lightning calls this once per optimizer step (after the last micro-batch of an accumulation).
        # The EMA is updated here, not in on_train_batch_end: callbacks' on_train_batch_end (the
        # ModelCheckpoint) run before the module's, so a checkpoint would hold an EMA one step behind
        # its weights, and a resumed run would lose that update.
        super().optimizer_step(*args, **kwargs)
        if not self._skipped:
            self.ema.update(self.trainable)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # The training path with a fixed generator per validation batch, so val losses are comparable
        # across steps (and the training stream is not touched); the EMA sees the same noise.
        loss, _ = self.step_loss(self.trainable, batch, self.step_randomness(batch, validation_batch=batch_idx))
        loss_ema, _ = self.step_loss(self.ema.shadow, batch, self.step_randomness(batch, validation_batch=batch_idx))
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
        sampler: Sampler | None = None,
        return_latents: bool = False,
        uncond_batch: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        guidance_interval: tuple[float, float] | None = None,
        **start: Any,
    ) -> torch.Tensor:
        """Generate one image per sample of ``batch`` (its labels/captions/concat inputs condition them).

        ``uncond_batch`` conditions the unconditional branch of guidance instead of the null condition (a
        negative prompt: ``{"caption": [...]}``); ``guidance_rescale`` (phi) and ``guidance_interval`` are
        :class:`~latentgen.generative.guidance.CFGModelFn`'s options. ``start`` (``init`` scaled latents,
        ``strength``, ``mask`` at latent size, ``resample``) goes to the sampler: image-to-image and
        inpainting with any model (:mod:`latentgen.generative.samplers`).

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
            if scale == 1.0:
                uncond = Conditioning()
            else:
                uncond = conditioner.null(batch) if uncond_batch is None else conditioner(uncond_batch)
        finally:
            conditioner.train(was_training)
        b = batch_size_of(batch)
        if noise is None:
            if self.latent_shape is None:
                raise ConfigError("the latent shape is unknown: build the system with image_size=${data.resolution}")
            noise = torch.randn((b, *self.latent_shape), generator=generator, device="cpu").to(self.device)
        param = self.objective.parameterization
        model_fn = CFGModelFn(
            denoiser,
            cond,
            uncond,
            scale,
            learn_variance=param.learn_variance,
            rescale=guidance_rescale,
            interval=guidance_interval,
        )
        z = sampler(model_fn, param, noise, steps=steps, generator=generator, **start)
        return z if return_latents else self.decode(z)

    @torch.no_grad()
    def image_grid(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        """Samples for a fixed batch (its labels/captions) from fixed noise, with the EMA weights.

        When the conditioner can show its condition as an image (``visualize(batch)``: low-res input,
        masked image, semantic map), each cell is ``input | output`` side by side: (B, C, H, k*W + W).
        """
        batch = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        samples = self.sample(batch, generator=generator)
        visualize = getattr(self.conditioner, "visualize", None)
        inputs = visualize(batch) if visualize is not None else None  # (B, C, H, k*W) in [-1, 1] or None
        if inputs is None:
            return samples
        return torch.cat([inputs.to(samples), samples], dim=-1)  # (B, C, H, k*W + W): input | output

    @staticmethod
    def grid_nrow(num_images: int) -> int:
        """Images per grid row: a square grid."""
        return max(1, int(math.sqrt(num_images)))
