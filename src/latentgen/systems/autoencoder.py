"""The first-stage system: an autoencoder trained with L1 + LPIPS + PatchGAN (docs/first_stage.md).

The system owns three parts: the autoencoder, its loss (``AutoencoderLoss``: reconstruction, NLL,
regulariser and GAN terms) and the discriminator (``conf/discriminator/``, or None: no GAN terms), which it
hands to the loss. Manual optimization with two optimizers (Lightning 2): the autoencoder (and the loss's
learned log-variance) and the discriminator. Only the autoencoder's optimizer is stepped through Lightning's
wrapper, so ``global_step`` counts batches (``trainer.max_steps`` = number of batches) instead of
advancing by 2 per batch; the discriminator schedule (``disc_start``) is counted in batches too.
The discriminator's raw optimizer is stepped directly (its gradients are already all-reduced by DDP
in ``manual_backward``; use bf16, not fp16 with a grad scaler, for mixed precision).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from latentgen.autoencoders.autoencoder import Autoencoder
from latentgen.autoencoders.losses import AutoencoderLoss
from latentgen.errors import ConfigError
from latentgen.systems.common import check_finite, check_nonfinite_policy, finite_on_all_ranks, global_batch_size


class AutoencoderSystem(L.LightningModule):
    kind = "autoencoder"

    def __init__(
        self,
        autoencoder: Autoencoder,
        loss: AutoencoderLoss,
        discriminator: nn.Module | None = None,
        learning_rate: float = 2e-4,
        disc_learning_rate: float | None = None,
        scale_lr: bool = False,
        betas: tuple[float, float] = (0.5, 0.9),
        latent_stats_batches: int = 16,
        nonfinite: str = "raise",
    ) -> None:
        """``discriminator``: a PatchGAN (or any ``(B,C,H,W) -> logits`` module) or None (GAN terms off).
        ``nonfinite``: "raise" stops at a NaN/Inf loss (naming the step), "skip" skips that batch's
        autoencoder and discriminator updates."""
        super().__init__()
        check_loss_fits_regularizer(autoencoder, loss)
        self.automatic_optimization = False
        self.autoencoder = autoencoder
        self.loss = loss
        self.discriminator = discriminator
        # Checkpoints written before the system owned the discriminator hold it under `loss.discriminator.`.
        self._register_load_state_dict_pre_hook(_rename_legacy_discriminator_keys)
        self.learning_rate = float(learning_rate)
        self.disc_learning_rate = float(disc_learning_rate if disc_learning_rate is not None else learning_rate)
        self.scale_lr = scale_lr
        self.betas = tuple(betas)
        self.latent_stats_batches = int(latent_stats_batches)
        self.nonfinite = check_nonfinite_policy(nonfinite)
        self.skipped_steps = 0
        # Validation metrics on images mapped to [0, 1]; reduced across DDP ranks by torchmetrics.
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.val_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self.val_lpips = MeanMetric()
        self.val_rec = MeanMetric()

    @property
    def has_discriminator(self) -> bool:
        return self.discriminator is not None

    # ------------------------------------------------------------------ optimization
    def effective_learning_rates(self) -> tuple[float, float]:
        """The learning rates actually used: scaled by global batch x accumulation when ``scale_lr``."""
        factor = 1.0
        if self.scale_lr:
            factor = float(global_batch_size(self.trainer) or 1)
        return self.learning_rate * factor, self.disc_learning_rate * factor

    def configure_optimizers(self):
        lr, d_lr = self.effective_learning_rates()
        ae_params = [p for p in self.autoencoder.parameters() if p.requires_grad]
        ae_params += list(self.loss.generator_parameters())
        opts = [torch.optim.Adam(ae_params, lr=lr, betas=self.betas)]
        if self.discriminator is not None:
            opts.append(torch.optim.Adam(self.discriminator.parameters(), lr=d_lr, betas=self.betas))
        return opts

    def on_train_start(self) -> None:
        lr, d_lr = self.effective_learning_rates()
        self.log_dict({"lr/autoencoder": lr, "lr/discriminator": d_lr}, rank_zero_only=True)

    def _batch_count(self) -> int:
        return int(self.global_step)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        x = batch["image"]
        step = self._batch_count()
        reg = self.autoencoder.regularizer

        out = self.autoencoder(x)
        g_loss, g_log = self.loss.generator_loss(
            x,
            out.recon,
            out.reg_loss,
            reg_weight=reg.weight,
            nll_reduction=reg.nll_reduction,
            last_layer=self.autoencoder.last_layer,
            batch_idx=step,
            discriminator=self.discriminator,
        )
        if not self._finite(g_loss, "autoencoder loss", step, batch_idx):
            return
        opts[0].zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        opts[0].step()
        logs = {f"train/{k}": v for k, v in g_log.items()}
        logs.update({f"train/{k}": v for k, v in out.log.items()})

        if self.discriminator is not None and self.loss.disc_trains_at(step):
            d_loss, d_log = self.loss.discriminator_loss(
                x, out.recon.detach(), discriminator=self.discriminator, batch_idx=step
            )
            if not self._finite(d_loss, "discriminator loss", step, batch_idx):
                return
            opts[1].zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            opts[1].optimizer.step()  # raw step: global_step keeps counting batches
            logs.update({f"train/{k}": v for k, v in d_log.items()})
        self.log_dict(logs, prog_bar=False, sync_dist=False)
        self.log("train/loss", g_loss.detach(), prog_bar=True)

    def _finite(self, loss: torch.Tensor, what: str, step: int, batch_idx: int) -> bool:
        """True if ``loss`` is finite on every rank; else raise (nonfinite=raise) or count a skipped step."""
        if finite_on_all_ranks(loss, self._trainer):
            return True
        if self.nonfinite == "raise":
            check_finite(loss, what=what, step=step, batch_idx=batch_idx, force=True)
        self.skipped_steps += 1
        rank_zero_warn(f"{what} is not finite at global step {step}; its update is skipped (nonfinite=skip)")
        self.log("train/skipped_steps", float(self.skipped_steps))
        return False

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        x = batch["image"]
        recon = self.reconstruct(x)
        x01, r01 = (x + 1) / 2, (recon + 1) / 2
        self.val_psnr.update(r01, x01)
        self.val_ssim.update(r01, x01)
        self.val_rec.update((x - recon).abs().mean())
        perceptual = getattr(self.loss, "perceptual", None)
        if perceptual is not None and perceptual.measures_distance:
            self.val_lpips.update(perceptual(x, recon).float().mean())
        self.log("val/psnr", self.val_psnr, prog_bar=True)
        self.log("val/ssim", self.val_ssim)
        self.log("val/l1", self.val_rec)
        if self.val_lpips.update_count:
            self.log("val/lpips", self.val_lpips)

    # ------------------------------------------------------------------ images
    @torch.no_grad()
    def image_grid(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        """Originals above their reconstructions, both in [-1, 1], (2B, C, H, W)."""
        x = batch["image"].to(self.device)
        return torch.cat([x, self.reconstruct(x)], dim=0)

    @staticmethod
    def grid_nrow(num_images: int) -> int:
        """Images per grid row: originals above their reconstructions (at most 16 pairs a row)."""
        return num_images // 2 if num_images <= 32 else 16

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction (KL: posterior mean; VQ: quantized), clamped to [-1, 1]."""
        return self.autoencoder.decode(self.autoencoder.encode(x)).clamp(-1, 1)


def check_loss_fits_regularizer(autoencoder: Autoencoder, loss: AutoencoderLoss) -> None:
    """Refuse a loss made for the other regularizer: the KL loss learns the NLL's log-variance (LDM), the VQ
    loss keeps it fixed (taming). ``autoencoder=vq_*`` selects ``ae_loss=vq`` itself; an explicit
    ``ae_loss=default`` beside it (or ``ae_loss=vq`` beside a KL autoencoder) ends here."""
    regularizer = autoencoder.regularizer
    wants = regularizer.loss_learns_logvar
    if wants is None or bool(loss.learn_logvar) == wants:
        return
    name = type(regularizer).__name__
    if wants:
        raise ConfigError(
            f"the autoencoder's {name} pairs with the KL loss, whose NLL log-variance is learned (ae_loss=default), "
            "but ae_loss.learn_logvar=false (the VQ loss, ae_loss=vq). Use ae_loss=default with a kl_* autoencoder."
        )
    raise ConfigError(
        f"the autoencoder's {name} pairs with the VQ loss (fixed log-variance, ae_loss=vq), but "
        "ae_loss.learn_logvar=true (the KL loss, ae_loss=default). Drop the ae_loss override: vq_* autoencoders "
        "select ae_loss=vq."
    )


def _rename_legacy_discriminator_keys(state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """A load_state_dict pre-hook: ``loss.discriminator.*`` (checkpoints written while the loss held the
    discriminator) -> ``discriminator.*``."""
    old = prefix + "loss.discriminator."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[prefix + "discriminator." + key[len(old) :]] = state_dict.pop(key)
