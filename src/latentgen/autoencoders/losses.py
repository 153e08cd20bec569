"""First-stage loss: L1/L2 + perceptual + learned-variance NLL + regulariser + adaptive PatchGAN term.

Formulas from LDM/VQGAN (docs/first_stage.md; Esser et al. 2021, Eq. 6-7; Rombach et al. 2022, App. G):

    rec      = l1 * |x - x̂| + l2 * (x - x̂)^2 + perceptual_weight * LPIPS(x, x̂)      per pixel, (B,C,H,W);
               LPIPS (B,) is broadcast to every pixel, as in LDM
    nll      = rec / exp(logvar) + logvar                                             (B,C,H,W)
               reduced as sum / B ("sum", KL autoencoders) or mean ("mean", VQ autoencoders)
    g        = -mean(D(x̂))                                                            generator GAN term
    d_weight = clamp(||∇_L nll|| / (||∇_L g|| + 1e-4), 0, 1e4).detach() * disc_weight  VQGAN Eq. 7, L the
               decoder's last layer
    total    = nll + reg_weight * reg + d_weight * disc_factor(step) * g

    D loss   = factor_D(step) * 0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(x̂))))      hinge
             = factor_D(step) * 0.5 * (mean(softplus(-D(x))) + mean(softplus(D(x̂))))  vanilla

The steps are counted in **batches** (manual optimization with two optimizers advances ``global_step``
by 2 per batch); the system passes ``trainer.fit_loop.total_batch_idx``.

``disc_start`` is the first batch at which the GAN term reaches the generator. LDM also starts training
D only there, so an untrained D suddenly pushes on G: the "reconstructions degrade when the
discriminator starts" reports (taming-transformers #44, #93). ``disc_train_start`` (< ``disc_start``)
warms D up first; the default (None) keeps LDM's behaviour.

The discriminator is not part of the loss: the system owns it (built from ``conf/discriminator/``, with its
own optimizer) and hands it to :meth:`AutoencoderLoss.generator_loss` and
:meth:`AutoencoderLoss.discriminator_loss`; without one (``discriminator=None``) the GAN terms are off.

Numerics: all loss arithmetic is float32 with autocast disabled; D itself runs under the ambient
autocast (like the autoencoder) and its logits are cast to float32.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from latentgen.errors import ConfigError

__all__ = ["AutoencoderLoss", "hinge_d_loss", "vanilla_d_loss", "adaptive_disc_weight"]


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(x̂))))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean(softplus(-D(x))) + mean(softplus(D(x̂)))): the BCE loss on logits."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


_D_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "hinge": hinge_d_loss,
    "vanilla": vanilla_d_loss,
}

# nll (B, C, H, W) -> scalar
_REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sum": lambda t: t.sum() / t.shape[0],  # sum over pixels, mean over the batch (KL, LDM)
    "mean": lambda t: t.mean(),  # mean over everything (VQ, taming)
}


def adaptive_disc_weight(
    nll: torch.Tensor, g: torch.Tensor, last_layer: torch.Tensor, *, max_weight: float = 1e4, eps: float = 1e-4
) -> torch.Tensor:
    """VQGAN Eq. 7: ||∇_L nll|| / (||∇_L g|| + eps), clamped to [0, max_weight], detached.

    Both gradients are taken w.r.t. ``last_layer`` only (``retain_graph`` so the caller can still
    backpropagate the total); nothing is accumulated into ``.grad``.
    """
    (nll_grad,) = torch.autograd.grad(nll, last_layer, retain_graph=True)
    (g_grad,) = torch.autograd.grad(g, last_layer, retain_graph=True)
    w = torch.linalg.vector_norm(nll_grad.float()) / (torch.linalg.vector_norm(g_grad.float()) + eps)
    return w.clamp(0.0, max_weight).detach()


class AutoencoderLoss(nn.Module):
    """L1 (+L2) + perceptual + NLL with a learned log-variance + regulariser + adaptive GAN (see module doc).

    Args:
        perceptual: a perceptual module, ``(x, x̂) -> (B,)`` (``LPIPS``, ``NoPerceptual``...).
        l1_weight, l2_weight, perceptual_weight: weights of the per-pixel reconstruction terms.
        disc_weight: multiplies the adaptive weight (0.5 for KL, 0.75-0.8 for VQ in LDM/taming).
        disc_factor: the GAN factor once active (both the G term and the D loss are multiplied by it).
        disc_start: first batch at which the GAN term reaches the generator.
        disc_train_start: first batch at which D is trained; None = ``disc_start`` (LDM). Must be
            <= ``disc_start``.
        disc_loss: "hinge" or "vanilla".
        learn_logvar: make ``logvar`` a trainable parameter (the system adds it to the AE optimizer);
            False keeps it fixed at ``logvar_init`` (with 0: nll = rec, the VQ loss).
        logvar_init: initial log-variance.
        adaptive_weight_max: upper clamp of the adaptive weight.
    """

    def __init__(
        self,
        perceptual: nn.Module,
        *,
        l1_weight: float = 1.0,
        l2_weight: float = 0.0,
        perceptual_weight: float = 1.0,
        disc_weight: float = 0.5,
        disc_factor: float = 1.0,
        disc_start: int = 0,
        disc_train_start: int | None = None,
        disc_loss: str = "hinge",
        learn_logvar: bool = True,
        logvar_init: float = 0.0,
        adaptive_weight_max: float = 1e4,
    ) -> None:
        super().__init__()
        if disc_loss not in _D_LOSSES:
            raise ConfigError(f"ae_loss.disc_loss={disc_loss!r} is not one of {sorted(_D_LOSSES)}")
        for key, v in dict(
            l1_weight=l1_weight,
            l2_weight=l2_weight,
            perceptual_weight=perceptual_weight,
            disc_weight=disc_weight,
            disc_factor=disc_factor,
            adaptive_weight_max=adaptive_weight_max,
        ).items():
            if v < 0:
                raise ConfigError(f"ae_loss.{key}={v} must be >= 0")
        disc_start = int(disc_start)
        disc_train_start = disc_start if disc_train_start is None else int(disc_train_start)
        if disc_start < 0 or disc_train_start < 0:
            raise ConfigError(
                f"ae_loss.disc_start ({disc_start}) and disc_train_start ({disc_train_start}) must be >= 0"
            )
        if disc_train_start > disc_start:
            raise ConfigError(
                f"ae_loss.disc_train_start={disc_train_start} is after disc_start={disc_start}: an untrained "
                "discriminator would push on the generator. Use disc_train_start <= disc_start (or null)."
            )
        self.perceptual = perceptual
        self.l1_weight = float(l1_weight)
        self.l2_weight = float(l2_weight)
        self.perceptual_weight = float(perceptual_weight)
        self.disc_weight = float(disc_weight)
        self.disc_factor = float(disc_factor)
        self.disc_start = disc_start
        self.disc_train_start = disc_train_start
        self.disc_loss = disc_loss
        self._d_loss_fn = _D_LOSSES[disc_loss]
        self.adaptive_weight_max = float(adaptive_weight_max)
        self.learn_logvar = bool(learn_logvar)
        # A parameter either way, so checkpoints look the same; frozen when not learned.
        self.logvar = nn.Parameter(torch.tensor(float(logvar_init)), requires_grad=self.learn_logvar)

    # ---------------------------------------------------------------------------------- schedule
    def disc_factor_at(self, batch_idx: int) -> float:
        """Factor of the generator's GAN term at batch ``batch_idx`` (with a discriminator): 0 before
        ``disc_start``."""
        return 0.0 if batch_idx < self.disc_start else self.disc_factor

    def disc_train_factor_at(self, batch_idx: int) -> float:
        """Factor of the discriminator loss at batch ``batch_idx``: 0 before ``disc_train_start``."""
        return 0.0 if batch_idx < self.disc_train_start else self.disc_factor

    def disc_trains_at(self, batch_idx: int) -> bool:
        """Whether D's loss is non-zero at batch ``batch_idx`` (else the system may skip its step)."""
        return self.disc_train_factor_at(batch_idx) > 0.0

    def generator_parameters(self) -> Iterator[nn.Parameter]:
        """Trainable parameters of the loss that belong to the autoencoder's optimizer (``logvar``)."""
        return (p for p in self.parameters() if p.requires_grad)

    # -------------------------------------------------------------------------------- generator
    def generator_loss(
        self,
        inputs: torch.Tensor,
        recon: torch.Tensor,
        reg_loss: torch.Tensor | float,
        *,
        reg_weight: float,
        nll_reduction: str = "sum",
        last_layer: torch.Tensor | None = None,
        batch_idx: int,
        discriminator: nn.Module | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Autoencoder loss (module doc) and its parts for logging (detached float32 scalars).

        Args:
            inputs, recon: (B, C, H, W) in [-1, 1]; gradients flow into ``recon``.
            reg_loss: the regulariser's loss (KL or VQ codebook/commitment), a scalar.
            reg_weight: its weight (``kl_weight`` / ``codebook_weight``).
            nll_reduction: "sum" (sum / B, KL) or "mean" (VQ).
            last_layer: the decoder's last weight, for the adaptive GAN weight. The weight falls back to
                ``disc_weight`` (no adaptation) when it cannot be computed: ``last_layer`` is None, the
                module is in eval mode (validation), grad mode is off, or the graph does not require grad.
            batch_idx: number of batches seen (not optimizer steps).
            discriminator: the system's discriminator, ``(B,C,H,W) -> logits``; None: no GAN term.

        The GAN term backpropagates through D into ``recon``, but D's parameters are frozen during that
        forward, so ``generator_loss`` never writes gradients into D (and no D grads are computed).
        """
        if nll_reduction not in _REDUCTIONS:
            raise ConfigError(f"nll_reduction={nll_reduction!r} is not one of {sorted(_REDUCTIONS)}")
        if inputs.shape != recon.shape:
            raise ValueError(f"inputs {tuple(inputs.shape)} and recon {tuple(recon.shape)} differ in shape")
        device = inputs.device
        with torch.autocast(device_type=device.type, enabled=False):
            x, x_hat = inputs.float(), recon.float()  # (B, C, H, W)
            rec = self.l1_weight * (x - x_hat).abs()  # (B, C, H, W)
            if self.l2_weight > 0:
                rec = rec + self.l2_weight * (x - x_hat).square()
            if self.perceptual_weight > 0:
                p = self.perceptual(x.contiguous(), x_hat.contiguous()).float()  # (B,)
                rec = rec + self.perceptual_weight * p.view(-1, 1, 1, 1)  # broadcast per pixel (LDM)
            else:
                p = torch.zeros(x.shape[0], device=device)
            logvar = self.logvar.float()
            nll = _REDUCTIONS[nll_reduction](rec / torch.exp(logvar) + logvar)  # scalar
            reg = torch.as_tensor(reg_loss, device=device).float()

        factor = 0.0 if discriminator is None else self.disc_factor_at(batch_idx)
        if discriminator is not None and factor > 0.0:
            with _frozen(discriminator):
                logits_fake = discriminator(recon).float()  # (B, 1, H', W'), grads flow to recon only
            with torch.autocast(device_type=device.type, enabled=False):
                g = -logits_fake.mean()
                if self._can_adapt(nll, g, last_layer):
                    d_weight = adaptive_disc_weight(nll, g, last_layer, max_weight=self.adaptive_weight_max)
                    d_weight = d_weight * self.disc_weight
                else:
                    d_weight = torch.tensor(self.disc_weight, device=device)
        else:
            g = torch.zeros((), device=device)
            d_weight = torch.zeros((), device=device)

        with torch.autocast(device_type=device.type, enabled=False):
            total = nll + reg_weight * reg + d_weight * factor * g
        log = {
            "total": total,
            "rec": rec.mean(),
            "nll": nll,
            "perceptual": p.mean(),
            "reg": reg,
            "g": g,
            "d_weight": d_weight,
            "disc_factor": torch.tensor(factor),
            "logvar": logvar,
        }
        return total, {k: v.detach().float().to(device) for k, v in log.items()}

    def _can_adapt(self, nll: torch.Tensor, g: torch.Tensor, last_layer: torch.Tensor | None) -> bool:
        return (
            last_layer is not None
            and self.training
            and torch.is_grad_enabled()
            and last_layer.requires_grad
            and nll.requires_grad
            and g.requires_grad
        )

    # ---------------------------------------------------------------------------- discriminator
    def discriminator_loss(
        self, inputs: torch.Tensor, recon: torch.Tensor, *, discriminator: nn.Module, batch_idx: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """D loss of ``discriminator`` on detached ``inputs`` (real) and ``recon`` (fake), times the D factor
        (0 before ``disc_train_start``; D is still evaluated, so the loss always has a graph to
        backpropagate)."""
        if discriminator is None:
            raise RuntimeError("discriminator_loss needs a discriminator (the system has none: discriminator=none)")
        # Two calls (not one concatenated batch), so BatchNorm sees real and fake statistics separately.
        logits_real = discriminator(inputs.detach()).float()  # (B, 1, H', W')
        logits_fake = discriminator(recon.detach()).float()
        factor = self.disc_train_factor_at(batch_idx)
        with torch.autocast(device_type=inputs.device.type, enabled=False):
            loss = factor * self._d_loss_fn(logits_real, logits_fake)
        log = {
            "disc_loss": loss,
            "logits_real": logits_real.mean(),
            "logits_fake": logits_fake.mean(),
            "disc_train_factor": torch.tensor(factor),
        }
        return loss, {k: v.detach().float().to(inputs.device) for k, v in log.items()}

    def extra_repr(self) -> str:
        return (
            f"perceptual={getattr(self.perceptual, 'name', type(self.perceptual).__name__)}, "
            f"l1={self.l1_weight}, l2={self.l2_weight}, perceptual_weight={self.perceptual_weight}, "
            f"disc_loss={self.disc_loss}, disc_weight={self.disc_weight}, disc_factor={self.disc_factor}, "
            f"disc_start={self.disc_start}, disc_train_start={self.disc_train_start}"
        )


class _frozen:
    """Context manager: parameters of ``module`` do not require grad inside (restored on exit).

    Autograd records requires_grad at forward time, so a forward inside the context lets gradients
    flow to the inputs while computing none for the parameters (Lightning's ``toggle_optimizer`` idea,
    local to one call).
    """

    def __init__(self, module: nn.Module) -> None:
        self.params = [p for p in module.parameters() if p.requires_grad]

    def __enter__(self) -> None:
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc: object) -> None:
        for p in self.params:
            p.requires_grad_(True)
