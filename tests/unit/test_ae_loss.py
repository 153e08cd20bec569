"""AutoencoderLoss: GAN losses on hand-made logits, the adaptive weight against its formula on a linear
decoder, schedules counted in batches, reductions, totals, and the Hydra configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from latentgen.autoencoders.discriminator import PatchGANDiscriminator
from latentgen.autoencoders.losses import AutoencoderLoss, adaptive_disc_weight, hinge_d_loss, vanilla_d_loss
from latentgen.autoencoders.perceptual import NoPerceptual
from latentgen.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf"


class IdentityD(nn.Module):
    """'Discriminator' whose logits are the (1-channel) image itself, with one dummy parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


class ConstPerceptual(nn.Module):
    name = "const"

    def __init__(self, values: torch.Tensor) -> None:
        super().__init__()
        self.values = values

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.values


def make_loss(**kw) -> AutoencoderLoss:
    kw.setdefault("perceptual_weight", 0.0)
    return AutoencoderLoss(NoPerceptual(), **kw)


# ------------------------------------------------------------------------------------ D losses
REAL = torch.tensor([2.0, 0.5, -1.0])
FAKE = torch.tensor([-3.0, 0.0, 0.5])


def test_hinge_on_hand_made_logits():
    # real: relu(1-2)=0, relu(0.5)=0.5, relu(2)=2 -> 2.5/3; fake: relu(-2)=0, relu(1)=1, relu(1.5)=1.5 -> 2.5/3
    assert hinge_d_loss(REAL, FAKE).item() == pytest.approx(0.5 * (2.5 / 3 + 2.5 / 3))


def test_vanilla_on_hand_made_logits():
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    want = 0.5 * (sum(sp(-r) for r in REAL.tolist()) / 3 + sum(sp(f) for f in FAKE.tolist()) / 3)
    assert vanilla_d_loss(REAL, FAKE).item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize(("kind", "fn"), [("hinge", hinge_d_loss), ("vanilla", vanilla_d_loss)])
def test_discriminator_loss_sees_detached_inputs(kind, fn):
    loss, disc = make_loss(disc_loss=kind, disc_start=0, disc_factor=0.7), IdentityD()
    x = REAL.view(1, 1, 1, 3)
    recon = FAKE.view(1, 1, 1, 3).clone().requires_grad_(True)
    d, log = loss.discriminator_loss(x, recon, discriminator=disc, batch_idx=0)
    assert d.item() == pytest.approx(0.7 * fn(REAL, FAKE).item(), rel=1e-6)
    assert log["logits_real"].item() == pytest.approx(REAL.mean().item())
    assert log["logits_fake"].item() == pytest.approx(FAKE.mean().item())
    d.backward()
    assert recon.grad is None  # D sees detached inputs
    assert disc.scale.grad is not None


# ---------------------------------------------------------------------------------- schedules
def test_schedule_counts_batches_with_warmup():
    loss, disc = make_loss(disc_start=10, disc_train_start=5), IdentityD()
    assert [loss.disc_factor_at(i) for i in (0, 9, 10, 11)] == [0.0, 0.0, 1.0, 1.0]
    assert [loss.disc_trains_at(i) for i in (4, 5, 9, 10)] == [False, True, True, True]
    x = torch.zeros(1, 1, 2, 2)
    d_before, _ = loss.discriminator_loss(x, x + 1, discriminator=disc, batch_idx=4)
    d_after, log = loss.discriminator_loss(x, x + 1, discriminator=disc, batch_idx=5)
    assert d_before.item() == 0.0 and d_before.requires_grad  # zero, but with a graph (DDP-safe)
    assert d_after.item() > 0 and log["disc_train_factor"].item() == 1.0


def test_default_trains_discriminator_at_disc_start_like_ldm():
    loss = make_loss(disc_start=7)
    assert loss.disc_train_start == 7
    assert not loss.disc_trains_at(6) and loss.disc_trains_at(7)


def test_generator_gan_term_off_before_disc_start():
    loss = make_loss(disc_start=3)
    x, recon = torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.5, requires_grad=True)
    total, log = loss.generator_loss(
        x, recon, 0.0, reg_weight=0.0, nll_reduction="mean", batch_idx=2, discriminator=IdentityD()
    )
    assert log["g"].item() == 0.0 and log["d_weight"].item() == 0.0 and log["disc_factor"].item() == 0.0
    assert total.item() == pytest.approx(0.5)


def test_warmup_after_disc_start_is_rejected():
    with pytest.raises(ConfigError, match="disc_train_start"):
        make_loss(disc_start=5, disc_train_start=6)


def test_no_discriminator_turns_gan_off():
    loss = make_loss(disc_start=0)
    x = torch.zeros(2, 3, 4, 4)
    total, log = loss.generator_loss(x, x + 0.25, 0.0, reg_weight=0.0, nll_reduction="mean", batch_idx=10)
    assert log["g"].item() == 0.0 and log["disc_factor"].item() == 0.0 and total.item() == pytest.approx(0.25)
    with pytest.raises(RuntimeError, match="needs a discriminator"):
        loss.discriminator_loss(x, x, discriminator=None, batch_idx=10)


def test_bad_options():
    with pytest.raises(ConfigError, match="disc_loss"):
        make_loss(disc_loss="wasserstein")
    with pytest.raises(ConfigError, match="l1_weight"):
        make_loss(l1_weight=-1.0)
    with pytest.raises(ConfigError, match="nll_reduction"):
        x = torch.zeros(1, 1, 2, 2)
        make_loss().generator_loss(x, x, 0.0, reg_weight=0.0, nll_reduction="median", batch_idx=0)


# ------------------------------------------------------------------------- reconstruction / nll
def test_reduction_sum_vs_mean_is_number_of_elements():
    torch.manual_seed(0)
    x, recon = torch.rand(4, 3, 5, 6), torch.rand(4, 3, 5, 6)
    loss = make_loss(l2_weight=0.3)
    s, _ = loss.generator_loss(x, recon, 0.0, reg_weight=0.0, nll_reduction="sum", batch_idx=0)
    m, _ = loss.generator_loss(x, recon, 0.0, reg_weight=0.0, nll_reduction="mean", batch_idx=0)
    torch.testing.assert_close(s, m * 3 * 5 * 6)
    per_pixel = (x - recon).abs() + 0.3 * (x - recon) ** 2
    torch.testing.assert_close(m, per_pixel.mean())


def test_logvar_and_perceptual_broadcast():
    torch.manual_seed(0)
    x, recon = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    p = torch.tensor([0.2, 0.6])
    loss = AutoencoderLoss(ConstPerceptual(p), perceptual_weight=2.0, logvar_init=math.log(2.0))
    total, log = loss.generator_loss(x, recon, 0.0, reg_weight=0.0, nll_reduction="sum", batch_idx=0)
    rec = (x - recon).abs() + 2.0 * p.view(2, 1, 1, 1)  # LPIPS (B,) broadcast to every pixel
    nll = (rec / 2.0 + math.log(2.0)).sum() / 2
    torch.testing.assert_close(total, nll)
    assert log["rec"].item() == pytest.approx(rec.mean().item(), rel=1e-6)
    assert log["perceptual"].item() == pytest.approx(0.4)
    assert log["logvar"].item() == pytest.approx(math.log(2.0))


@pytest.mark.parametrize(("reduction", "learn_logvar", "w"), [("sum", True, 1e-6), ("mean", False, 1.0)])
def test_kl_and_vq_totals(reduction, learn_logvar, w):
    torch.manual_seed(0)
    x, recon = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    reg = torch.tensor(123.0)
    loss = make_loss(learn_logvar=learn_logvar)
    total, log = loss.generator_loss(x, recon, reg, reg_weight=w, nll_reduction=reduction, batch_idx=0)
    torch.testing.assert_close(total, log["nll"] + w * reg)
    assert log["reg"].item() == 123.0
    assert [p is loss.logvar for p in loss.generator_parameters()] == ([True] if learn_logvar else [])


# ----------------------------------------------------------------------------- adaptive weight
def _linear_setup(disc_weight=0.5, a=(0.3, -0.2, 0.1)):
    """x̂ = W h (a 1x1 conv 'decoder'), D(x̂) = a·x̂ (a 1x1 conv), loss = mean (x - x̂)^2."""
    torch.manual_seed(0)
    B, K, C, H = 2, 4, 3, 5
    h = torch.randn(B, K, H, H)
    x = torch.randn(B, C, H, H)
    decoder = nn.Conv2d(K, C, 1, bias=False)
    disc = nn.Conv2d(C, 1, 1, bias=False)
    with torch.no_grad():
        disc.weight.copy_(torch.tensor(a).view(1, C, 1, 1))
    loss = AutoencoderLoss(
        NoPerceptual(),
        l1_weight=0.0,
        l2_weight=1.0,
        perceptual_weight=0.0,
        learn_logvar=False,
        disc_weight=disc_weight,
        disc_start=0,
    )
    return loss, disc, decoder, h, x


def test_adaptive_weight_matches_formula_on_linear_decoder():
    loss, disc, decoder, h, x = _linear_setup()
    recon = decoder(h)
    total, log = loss.generator_loss(
        x, recon, 0.0, reg_weight=0.0, nll_reduction="mean", last_layer=decoder.weight, batch_idx=0, discriminator=disc
    )
    # By hand (W is C x K): nll = mean (x - Wh)^2  ->  dnll/dW = -2/(BCHW) sum_bhw (x - x̂)_c h_k
    #                       g = -mean_bhw a·x̂     ->  dg/dW   = -1/(BHW)  sum_bhw a_c h_k
    B, C, H, W = x.shape
    a = disc.weight.detach().view(C)
    x_hat = recon.detach()
    grad_nll = -2.0 / (B * C * H * W) * torch.einsum("bchw,bkhw->ck", x - x_hat, h)
    grad_g = -1.0 / (B * H * W) * torch.einsum("c,bkhw->ck", a, h)
    want = (grad_nll.norm() / (grad_g.norm() + 1e-4)).clamp(0, 1e4) * 0.5
    assert log["d_weight"].item() == pytest.approx(want.item(), rel=1e-5)
    g = -(torch.einsum("c,bchw->bhw", a, x_hat)).mean()
    assert log["g"].item() == pytest.approx(g.item(), rel=1e-5)
    torch.testing.assert_close(total, log["nll"] + want * g)

    # Backward: the decoder gets grad(nll) + d_weight * grad(g) (d_weight detached); D gets nothing.
    total.backward()
    torch.testing.assert_close(decoder.weight.grad.view(C, -1), grad_nll + want * grad_g, rtol=1e-5, atol=1e-7)
    assert disc.weight.grad is None
    assert disc.weight.requires_grad  # restored after the frozen forward


def test_adaptive_weight_is_clamped():
    loss, disc, decoder, h, x = _linear_setup(disc_weight=0.8, a=(1e-12, 0.0, 0.0))
    x = 100 * x  # ||grad nll|| / (||grad g|| + 1e-4) ~ 1e6 > 1e4
    _, log = loss.generator_loss(
        x,
        decoder(h),
        0.0,
        reg_weight=0.0,
        nll_reduction="mean",
        last_layer=decoder.weight,
        batch_idx=0,
        discriminator=disc,
    )
    assert log["d_weight"].item() == pytest.approx(1e4 * 0.8)


def test_adaptive_weight_falls_back_to_disc_weight():
    loss, disc, decoder, h, x = _linear_setup(disc_weight=0.6)
    # no last layer
    _, log = loss.generator_loss(
        x, decoder(h), 0.0, reg_weight=0.0, nll_reduction="mean", batch_idx=0, discriminator=disc
    )
    assert log["d_weight"].item() == pytest.approx(0.6)
    # eval mode (validation) and no-grad mode
    loss.eval()
    _, log = loss.generator_loss(
        x,
        decoder(h),
        0.0,
        reg_weight=0.0,
        nll_reduction="mean",
        last_layer=decoder.weight,
        batch_idx=0,
        discriminator=disc,
    )
    assert log["d_weight"].item() == pytest.approx(0.6)
    loss.train()
    with torch.no_grad():
        _, log = loss.generator_loss(
            x,
            decoder(h),
            0.0,
            reg_weight=0.0,
            nll_reduction="mean",
            last_layer=decoder.weight,
            batch_idx=0,
            discriminator=disc,
        )
    assert log["d_weight"].item() == pytest.approx(0.6)


def test_adaptive_weight_function_leaves_grads_alone():
    w = torch.randn(3, requires_grad=True)
    nll, g = (w**2).sum(), -(w * 2).sum()
    d = adaptive_disc_weight(nll, g, w)
    assert w.grad is None and not d.requires_grad
    assert d.item() == pytest.approx((2 * w).norm().item() / (2 * math.sqrt(3) + 1e-4), rel=1e-5)


# --------------------------------------------------------------------------------- precision
def test_fp32_under_bf16_autocast_with_patchgan():
    torch.manual_seed(0)
    loss, disc = AutoencoderLoss(NoPerceptual(), disc_start=0), PatchGANDiscriminator(3, ndf=8, n_layers=2)
    dec = nn.Conv2d(3, 3, 3, padding=1)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        recon = dec(x)
        assert recon.dtype == torch.bfloat16
        total, log = loss.generator_loss(
            x,
            recon,
            torch.tensor(1.0),
            reg_weight=1e-6,
            nll_reduction="sum",
            last_layer=dec.weight,
            batch_idx=0,
            discriminator=disc,
        )
        d, dlog = loss.discriminator_loss(x, recon, discriminator=disc, batch_idx=0)
    assert total.dtype == torch.float32 and d.dtype == torch.float32
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in {**log, **dlog}.values())
    total.backward()
    assert dec.weight.grad is not None and all(p.grad is None for p in disc.parameters())


# ------------------------------------------------------------------------------------ configs
def _compose(overrides: list[str], tmp_path: Path):
    from hydra import compose, initialize_config_dir

    root = tmp_path / "conf"
    root.mkdir(parents=True)
    for group in ("perceptual", "discriminator", "ae_loss"):
        (root / group).symlink_to(CONF / group)
    (root / "config.yaml").write_text(
        "defaults:\n  - perceptual: none\n  - discriminator: patchgan_tiny\n  - ae_loss: default\n  - _self_\n"
        "data:\n  channels: 1\n"
    )
    with initialize_config_dir(config_dir=str(root), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_configs_instantiate_recursively(tmp_path):
    from hydra.utils import instantiate

    cfg = _compose([], tmp_path / "a")
    loss = instantiate(cfg.ae_loss)
    assert isinstance(loss, AutoencoderLoss) and loss.perceptual.name == "none"
    assert not any(isinstance(m, PatchGANDiscriminator) for m in loss.modules())  # the system owns D
    d = instantiate(cfg.discriminator)
    assert isinstance(d, PatchGANDiscriminator) and (d.in_channels, d.ndf, d.n_layers, d.norm) == (1, 16, 2, "batch")
    assert (loss.disc_start, loss.disc_train_start, loss.disc_loss, loss.disc_weight) == (50001, 50001, "hinge", 0.5)
    assert loss.learn_logvar

    cfg = _compose(["discriminator=none", "ae_loss=vq", "ae_loss.disc_train_start=0"], tmp_path / "b")
    assert cfg.discriminator is None
    loss = instantiate(cfg.ae_loss)
    assert not loss.learn_logvar
    assert (loss.disc_start, loss.disc_weight) == (0, 0.75)

    cfg = _compose(["discriminator=patchgan", "discriminator.norm=group"], tmp_path / "c")
    d = instantiate(cfg.discriminator)
    assert (d.ndf, d.n_layers, d.norm) == (64, 3, "group")
