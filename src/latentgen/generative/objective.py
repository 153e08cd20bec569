"""The training objective shared by diffusion and flow matching.

``Objective(schedule, prediction, time_sampler, weighting)`` is the whole difference between DDPM and
rectified flow: ``objective=ddpm_eps`` versus ``objective=rectified_flow`` in the config. One loss:

    t ~ time_sampler;  eps ~ N(0, I) (+ offset noise);  x_t = alpha_t x0 + sigma_t eps
    loss = mean_B[ w(t) * mean_{C,H,W} (f(x_t, t) - target(x0, eps, t))^2 ]       (Ho et al. Eq. 14)
           [+ vlb_weight * T * mean_B L_vlb(t)   with learned variance (Nichol & Dhariwal 2021, §3.1)]

**Learned variance** (iDDPM, Eq. 15-16). The network returns 2C channels: the prediction, then
``v in [-1, 1]``; ``log Sigma = frac log beta_k + (1 - frac) log beta_tilde_k`` with ``frac = (v + 1)/2``
(Eq. 15). The hybrid loss is ``L_simple + lambda L_vlb`` (Eq. 16) with the mean seen through a
stop-gradient. ``L_vlb = sum_k L_k`` is estimated from the one sampled k as ``T * L_k``, so the added term is
``vlb_weight * T * L_k`` (= L_k for lambda = 0.001, T = 1000, as the reference code does), in bits per
dimension (mean over C, H, W):

- k > 0: ``L_k = KL(q(x_{k-1} | x_k, x0) || p(x_{k-1} | x_k))`` (Ho et al. Eq. 5-7);
- k = 0: the decoder NLL ``-log p(x0 | x_1)``. The papers use a *discretized* Gaussian for 8-bit pixels;
  latents are continuous, so we use the **continuous Gaussian NLL** (a density: it can be negative).

The min-SNR/unit ``weighting`` applies to the MSE term only.

**Offset noise** (Guttenberg 2023): ``eps += offset_noise * randn(B, C, 1, 1)`` for noise drawn here;
noise passed in by the caller is used as is. The target sees the same (offset) noise.

**Randomness.** The objective draws its own numbers, ``t`` then ``eps`` then the offset noise (drawn even
when ``offset_noise = 0``), with :meth:`Objective.draw` from the step's
:class:`~latentgen.randomness.BatchRandomness`; :meth:`Objective.loss` draws with it when ``t``/``noise``
are not given, so every caller takes the same path.
"""

from __future__ import annotations

import math

import torch

from latentgen.errors import ConfigError
from latentgen.generative.parameterization import Parameterization, interpolate_log_variance
from latentgen.generative.predictions import Prediction
from latentgen.generative.schedules import DiscreteSchedule, NoiseSchedule
from latentgen.generative.time_samplers import TimeSampler
from latentgen.generative.weighting import LossWeighting, UnitWeighting
from latentgen.randomness import BatchRandomness

__all__ = ["Objective", "gaussian_nll", "interpolate_log_variance", "normal_kl"]

_LN2 = math.log(2.0)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def gaussian_nll(x, mean, logvar) -> torch.Tensor:
    """-log N(x; mean, e^logvar), elementwise, in nats (continuous density)."""
    return 0.5 * (math.log(2 * math.pi) + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.ndim)))  # (B, ...) -> (B,)


class Objective:
    """Training loss; samplers take its :attr:`parameterization` (schedule, prediction, learned variance).

    Args:
        schedule: a :class:`NoiseSchedule` (discrete diffusion or continuous path).
        prediction: what the network predicts (eps / x0 / v / velocity).
        time_sampler: training distribution of t.
        weighting: per-sample weight of the MSE (default unit).
        learn_variance: the network has 2x output channels (prediction, variance interpolation v);
            adds the iDDPM VLB term. Needs a discrete schedule and a discrete time sampler.
        vlb_weight: lambda of iDDPM Eq. 16.
        offset_noise: std of the per-(sample, channel) constant added to drawn noise.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction: Prediction,
        time_sampler: TimeSampler,
        weighting: LossWeighting | None = None,
        learn_variance: bool = False,
        vlb_weight: float = 0.001,
        offset_noise: float = 0.0,
    ) -> None:
        self.schedule = schedule
        self.prediction = prediction
        self.time_sampler = time_sampler
        self.weighting = weighting if weighting is not None else UnitWeighting()
        self.learn_variance = bool(learn_variance)
        self.vlb_weight = float(vlb_weight)
        self.offset_noise = float(offset_noise)
        self._check()

    def _check(self) -> None:
        sched, ts = self.schedule, self.time_sampler
        if self.learn_variance and not isinstance(sched, DiscreteSchedule):
            raise ConfigError(
                f"objective.learn_variance=true needs a discrete diffusion schedule (betas), got {sched!r}. "
                "Set objective.learn_variance=false or use objective=ddpm_eps_learned_var."
            )
        if self.learn_variance and not ts.is_discrete:
            raise ConfigError(
                "objective.learn_variance=true needs grid times: set objective.time_sampler to UniformDiscreteTime, "
                f"got {type(ts).__name__}"
            )
        if ts.is_discrete and sched.is_discrete and ts.num_timesteps != sched.num_timesteps:
            raise ConfigError(
                f"objective.time_sampler.num_timesteps={ts.num_timesteps} != objective.schedule.num_timesteps="
                f"{sched.num_timesteps}; interpolate one from the other"
            )
        if self.vlb_weight < 0 or self.offset_noise < 0:
            raise ConfigError(
                "objective.vlb_weight and objective.offset_noise must be >= 0, "
                f"got {self.vlb_weight}, {self.offset_noise}"
            )
        self.prediction.check_schedule(sched)

    # ------------------------------------------------------------------ what samplers need
    @property
    def parameterization(self) -> Parameterization:
        """The schedule, prediction and learned-variance flag: what a sampler needs of this model."""
        return Parameterization(self.schedule, self.prediction, self.learn_variance)

    def model_outputs(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Split the raw network output (B, C[*2], H, W) into (prediction (B, C, H, W), v or None)."""
        return self.parameterization.model_outputs(raw)

    # ------------------------------------------------------------------ the loss
    def draw(self, rng: BatchRandomness, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Training ``t`` (B,) and noise ``eps`` (B, *shape) (offset noise included) from ``rng``, float32 on
        ``rng.device``. Always three draws, t, eps, offset, in that order."""
        t = rng.draw(lambda n, g, d: self.time_sampler.sample(n, d, g)).float()  # (B,)
        eps = rng.randn(*shape)  # (B, C, H, W)
        offset = rng.randn(shape[0], *(1,) * (len(shape) - 1))  # (B, C, 1, 1)
        if self.offset_noise > 0:
            eps = eps + self.offset_noise * offset
        return t, eps

    def loss(
        self,
        model_fn,
        x0: torch.Tensor,
        *,
        rng: BatchRandomness | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Args:
            model_fn: ``model_fn(x_t (B,C,H,W) float32, t (B,) float32) -> raw output``.
            x0: (B, C, H, W) clean (latent) batch.
            rng: draws t and eps (:meth:`draw`) when they are not given; default: one process, the whole
                batch, from ``generator`` (None: torch's global RNG).
            noise, t: fix eps (B,C,H,W) and/or t (B,) (drawn beforehand by the system, tests, evaluation of
                the loss at given t).
        Returns:
            (scalar loss, log dict of detached scalars: loss, loss_simple, mse[, vlb]).
        """
        if t is None or noise is None:
            if rng is None:
                rng = BatchRandomness.local(x0.shape[0], generator, device=x0.device)
            t_drawn, noise_drawn = self.draw(rng, tuple(x0.shape[1:]))
            t = t_drawn if t is None else t
            noise = noise_drawn if noise is None else noise
        B = x0.shape[0]
        x0 = x0.float()
        t = t.to(device=x0.device, dtype=torch.float32)
        noise = noise.to(x0.device).float()

        s = self.schedule(t).reshape_like(x0)  # fields (B, 1, 1, 1)
        x_t = s.alpha_t * x0 + s.sigma_t * noise  # (B, C, H, W), Ho et al. Eq. 4
        raw = model_fn(x_t, t)
        pred, v = self.model_outputs(raw)
        pred = pred.float()
        target = self.prediction.target(x0, noise, s)  # (B, C, H, W)
        mse = _mean_flat((pred - target) ** 2)  # (B,)
        w = self.weighting(s, self.prediction).reshape(B)  # (B,)
        loss_simple = (w * mse).mean()
        log = {"loss_simple": loss_simple.detach(), "mse": mse.mean().detach()}
        loss = loss_simple
        if self.learn_variance:
            vlb = self.vlb_terms(pred.detach(), v.float(), x0, x_t, t)  # (B,) bits/dim
            loss = loss + self.vlb_weight * self.schedule.num_timesteps * vlb.mean()
            log["vlb"] = vlb.mean().detach()
        log["loss"] = loss.detach()
        return loss, log

    def vlb_terms(
        self, pred: torch.Tensor, v: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """Per-sample L_k in bits/dim (iDDPM §3.1): KL for k > 0, continuous Gaussian NLL for k = 0.

        ``pred`` should be detached by the caller (stop-gradient on the mean, iDDPM Eq. 16); gradients reach
        only ``v`` (the variance interpolation).
        """
        sched: DiscreteSchedule = self.schedule  # type: ignore[assignment]
        k = sched.t_to_index(t)  # (B,) int64

        def tab(x: torch.Tensor) -> torch.Tensor:
            return x.to(x_t.device)[k].float().reshape((-1,) + (1,) * (x_t.ndim - 1))  # (B, 1, 1, 1)

        abar, abar_prev, beta = sched.alphas_cumprod, sched.alphas_cumprod_prev, sched.betas
        # Ho et al. Eq. 7: posterior mean coefficients of q(x_{k-1} | x_k, x0)
        c_x0 = tab(abar_prev.sqrt() * beta / (1.0 - abar))
        c_xt = tab((1.0 - beta).sqrt() * (1.0 - abar_prev) / (1.0 - abar))
        beta_tilde_clipped = torch.cat([sched.beta_tilde[1:2], sched.beta_tilde[1:]])  # log(0) at k=0 avoided
        log_bt = tab(beta_tilde_clipped.log())
        log_b = tab(beta.log())

        s = self.schedule(t).reshape_like(x_t)
        x0_hat, _ = self.prediction.to_x0_eps(pred, x_t, s)
        mean_p = c_x0 * x0_hat + c_xt * x_t  # (B, C, H, W), model mean through the stop-gradient
        logvar_p = interpolate_log_variance(v, log_b, log_bt)  # (B, C, H, W), iDDPM Eq. 15
        mean_q = c_x0 * x0 + c_xt * x_t
        kl = _mean_flat(normal_kl(mean_q, log_bt, mean_p, logvar_p)) / _LN2  # (B,) bits
        nll = _mean_flat(gaussian_nll(x0, mean_p, logvar_p)) / _LN2  # (B,) bits, k = 0 decoder
        return torch.where(k == 0, nll, kl)

    def __repr__(self) -> str:
        return (
            f"Objective(schedule={self.schedule!r}, prediction={self.prediction!r}, time_sampler="
            f"{type(self.time_sampler).__name__}, weighting={self.weighting!r}, learn_variance={self.learn_variance})"
        )
