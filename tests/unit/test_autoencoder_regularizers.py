"""KL, VQ and identity regularizers: analytic invariants of the losses, gradients and codebook updates."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from latentgen.autoencoders.regularizers import IdentityRegularizer, KLRegularizer, VectorQuantizer
from latentgen.errors import ConfigError
from tests.helpers import vq_with_codebook


# ----------------------------------------------------------------------------------------------- KL
def test_kl_interface_constants():
    reg = KLRegularizer()
    assert (reg.moments_factor, reg.nll_reduction, reg.weight) == (2, "sum", 1e-6)
    assert KLRegularizer(weight=0.5).weight == 0.5


def test_kl_of_standard_normal_posterior_is_zero():
    h = torch.zeros(4, 6, 5, 5)  # mean 0, logvar 0 -> q = N(0, I)
    out = KLRegularizer()(h)
    assert out.loss.item() == 0.0
    assert out.z.shape == (4, 3, 5, 5)


def test_kl_matches_torch_distributions_sum_over_chw_mean_over_batch():
    mean, logvar = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    out = KLRegularizer()(torch.cat([mean, logvar], dim=1))
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(q, p).sum() / 3
    torch.testing.assert_close(out.loss, expected)
    assert out.loss.dtype == torch.float32


def test_kl_logvar_is_clamped():
    h = torch.cat([torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 100.0)], dim=1)
    _, logvar = KLRegularizer().moments(h)
    assert torch.all(logvar == 20.0)
    h[:, 1] = -100.0
    assert torch.all(KLRegularizer().moments(h)[1] == -30.0)


def test_kl_reparameterized_sample_statistics():
    mean, std = 2.0, 0.5
    h = torch.cat([torch.full((8, 1, 64, 64), mean), torch.full((8, 1, 64, 64), math.log(std**2))], dim=1)
    z = KLRegularizer()(h).z  # 32768 samples
    assert abs(z.mean().item() - mean) < 0.02
    assert abs(z.std().item() - std) < 0.01


def test_kl_latent_mean_or_seeded_sample():
    reg = KLRegularizer()
    h = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(reg.latent(h), h[:, :4])
    a = reg.latent(h, sample=True, generator=torch.Generator().manual_seed(1))
    b = reg.latent(h, sample=True, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, h[:, :4])
    assert reg.decoder_input(a) is a


def test_kl_rejects_odd_channels():
    with pytest.raises(ConfigError, match="latent_channels"):
        KLRegularizer()(torch.randn(1, 3, 2, 2))


# ----------------------------------------------------------------------------------------- identity
def test_identity_regularizer():
    reg = IdentityRegularizer()
    h = torch.randn(2, 3, 4, 4)
    out = reg(h)
    assert out.z is h and out.loss.item() == 0.0 and reg.weight == 0.0
    assert reg.latent(h) is h and reg.decoder_input(h) is h
    assert (reg.moments_factor, reg.nll_reduction) == (1, "mean")


# ----------------------------------------------------------------------------------------------- VQ
def _to_map(z: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    return z.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()  # (N, D) -> (B, D, h, w)


def test_vq_interface_constants():
    vq = VectorQuantizer(16, 4)
    assert (vq.moments_factor, vq.nll_reduction, vq.weight, vq.beta) == (1, "mean", 1.0, 0.25)


def test_vq_nearest_matches_brute_force_and_chunking():
    vq = VectorQuantizer(37, 5)
    z = torch.randn(200, 5)
    expected = torch.cdist(z, vq.codebook.detach()).argmin(dim=1)
    assert torch.equal(vq.nearest(z, vq.codebook), expected)
    assert torch.equal(vq.nearest(z, vq.codebook, chunk_elems=37 * 7), expected)  # 7 rows per chunk


def test_vq_quantizes_to_codes_and_straight_through_passes_gradients():
    vq = VectorQuantizer(8, 3)
    h = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = vq(h)
    zq, idx = vq.quantize(h)
    torch.testing.assert_close(out.z, zq)  # forward value: the codes
    torch.testing.assert_close(zq, vq.codes_from_indices(idx))
    (out.z * torch.arange(3.0)[None, :, None, None]).sum().backward()
    # backward of z + sg[e - z] is the identity: d/dh = the upstream gradient
    torch.testing.assert_close(h.grad, torch.arange(3.0)[None, :, None, None].expand_as(h))


def test_vq_loss_beta_on_commitment_and_gradient_split():
    """loss = ||sg[z]-e||^2 + beta ||z-sg[e]||^2: codes get 2(e-z)/n, the encoder beta*2(z-e)/n."""
    torch.manual_seed(3)
    codes = torch.randn(6, 4)
    vq = vq_with_codebook(codes, beta=0.25)
    h = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = vq(h)
    z = h.detach().permute(0, 2, 3, 1).reshape(-1, 4)  # (18, 4)
    e = codes[torch.cdist(z, codes).argmin(1)]  # (18, 4)
    mse = F.mse_loss(z, e)
    torch.testing.assert_close(out.loss, 1.25 * mse)
    torch.testing.assert_close(out.log["commit_loss"], mse)
    out.loss.backward()
    n = z.numel()
    enc_grad = _to_map(0.25 * 2 * (z - e) / n, 2, 3, 3)
    torch.testing.assert_close(h.grad, enc_grad)  # beta on the encoder's (commitment) term only
    code_grad = torch.zeros_like(codes).index_add_(0, torch.cdist(z, codes).argmin(1), 2 * (e - z) / n)
    torch.testing.assert_close(vq.codebook.grad, code_grad)  # no beta on the codebook term


def test_vq_under_bf16_autocast_assigns_like_fp32():
    vq = VectorQuantizer(32, 4)
    h = torch.randn(2, 4, 4, 4)
    ref = vq.quantize(h)[1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vq(h.bfloat16())
    assert out.loss.dtype == torch.float32 and out.z.dtype == torch.bfloat16
    assert torch.equal(vq.quantize(h.bfloat16())[1], vq.quantize(h.bfloat16().float())[1])
    assert (vq.quantize(h.bfloat16().float())[1] == ref).float().mean() > 0.8  # bf16 rounding may flip ties


def test_vq_perplexity_of_uniform_assignment_is_number_of_used_codes():
    codes = torch.eye(8) * 3.0  # (8, 8), well separated
    vq = vq_with_codebook(codes).eval()
    z = codes[torch.arange(5).repeat(4)]  # codes 0..4, 4 times each -> (20, 8)
    out = vq(_to_map(z, 1, 4, 5))
    assert out.log["perplexity"].item() == pytest.approx(5.0, rel=1e-5)
    assert out.log["usage"].item() == pytest.approx(5 / 8)
    assert out.loss.item() == 0.0


def test_vq_ema_moves_codes_towards_assigned_means():
    codes = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    vq = vq_with_codebook(codes, ema=True, decay=0.9, eps=1e-5).train()
    assert len(list(vq.parameters())) == 0  # the EMA codebook is a buffer, not optimized
    z = torch.tensor([[1.0, 1.0], [1.0, 3.0], [9.0, 9.0], [11.0, 9.0]])  # means (1, 2) and (10, 9)
    out = vq(_to_map(z, 1, 2, 2))
    # Eqs. 6-8: N = 0.9*1 + 0.1*2 = 1.1; m0 = 0.9*(0,0) + 0.1*(2,4); m1 = 0.9*(10,10) + 0.1*(20,18)
    n = torch.tensor([1.1, 1.1])
    smoothed = (n + 1e-5) / (n.sum() + 2e-5) * n.sum()
    expected = torch.tensor([[0.2, 0.4], [11.0, 10.8]]) / smoothed[:, None]
    torch.testing.assert_close(vq.codebook, expected)
    assert torch.dist(vq.codebook[0], torch.tensor([1.0, 2.0])) < torch.dist(codes[0], torch.tensor([1.0, 2.0]))
    assert torch.dist(vq.codebook[1], torch.tensor([10.0, 9.0])) < torch.dist(codes[1], torch.tensor([10.0, 9.0]))
    assert out.log["codebook_loss"].item() == 0.0  # only the commitment term remains
    torch.testing.assert_close(out.loss, 0.25 * out.log["commit_loss"])
    for _ in range(300):
        vq(_to_map(z, 1, 2, 2))
    torch.testing.assert_close(vq.codebook, torch.tensor([[1.0, 2.0], [10.0, 9.0]]), atol=1e-3, rtol=0)
    before = vq.codebook.clone()
    vq.eval()(_to_map(z + 5, 1, 2, 2))
    assert torch.equal(vq.codebook, before)  # no update outside training


def test_vq_dead_code_restart_revives_unused_codes():
    codes = torch.cat([torch.zeros(1, 2), torch.full((7, 2), 100.0)])  # only code 0 is near the data
    # usage starts at N/K = 8 per code and halves per forward unused: below 0.1 * 8 after 4 forwards
    vq = vq_with_codebook(codes, dead_code_restart=True, dead_code_threshold=0.1, usage_decay=0.5).train()
    z = torch.randn(64, 2)
    for _ in range(4):
        out = vq(_to_map(z, 1, 8, 8))
        assert out.log["usage"].item() == pytest.approx(1 / 8)  # not dead yet: no restart
    assert vq.code_usage[1:].max().item() == pytest.approx(0.5)
    fifth = vq(_to_map(z, 1, 8, 8))
    assert fifth.log["usage"].item() > 0.5
    revived = vq.codebook.detach()[1:]  # (7, 2): now copies of encoder outputs
    assert torch.cdist(revived, z, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values.max() == 0
    assert torch.all(vq.code_usage >= 0.8)  # a revived code starts at the expected usage again


@pytest.mark.parametrize("batch", [1, 4])
def test_vq_dead_code_restart_leaves_a_healthy_codebook_alone_with_small_batches(batch):
    # K = 1024 codes, N = batch * 8 * 8 <= 256 vectors per forward: most codes go unassigned in any one forward
    # although every code is used equally often. A threshold counted in absolute assignments reset most of
    # the codebook at the second forward; one relative to N / K must reset nothing.
    torch.manual_seed(0)
    K, D = 1024, 4
    vq = vq_with_codebook(torch.randn(K, D), dead_code_restart=True).train()
    before = vq.codebook.detach().clone()
    for _ in range(30):
        idx = torch.randint(0, K, (batch * 64,))
        z = before[idx] + 1e-3 * torch.randn(batch * 64, D)  # each vector next to a uniformly drawn code
        vq(_to_map(z, batch, 8, 8))
    changed = (vq.codebook.detach() != before).any(dim=1).sum().item()
    assert changed == 0, f"{changed} of {K} codes of a healthy codebook were reset"


def test_vq_dead_code_threshold_must_be_a_fraction():
    with pytest.raises(ConfigError, match="dead_code_threshold"):
        VectorQuantizer(8, 2, dead_code_threshold=1.5)


def test_vq_ema_and_dead_code_restart_together():
    codes = torch.cat([torch.zeros(1, 2), torch.full((3, 2), 50.0)])
    vq = vq_with_codebook(codes, ema=True, dead_code_restart=True, usage_decay=0.1).train()
    z = torch.randn(32, 2)
    for _ in range(4):
        out = vq(_to_map(z, 1, 4, 8))
    assert out.log["usage"].item() == 1.0
    assert torch.all(vq.codebook.abs() < 10)


def test_vq_l2_normalized_codes_have_unit_norm():
    vq = VectorQuantizer(16, 4, l2_normalize=True)
    h = 5 * torch.randn(2, 4, 3, 3)
    out = vq(h)
    torch.testing.assert_close(vq.codes().norm(dim=1), torch.ones(16))
    torch.testing.assert_close(out.z.norm(dim=1), torch.ones(2, 3, 3))
    torch.testing.assert_close(vq.latent(h).norm(dim=1), torch.ones(2, 3, 3))
    torch.testing.assert_close(vq.decoder_input(h).norm(dim=1), torch.ones(2, 3, 3))


def test_vq_latent_is_pre_quantization_and_decoder_input_quantizes():
    vq = VectorQuantizer(8, 3)
    h = torch.randn(2, 3, 4, 4)
    assert vq.latent(h) is h
    torch.testing.assert_close(vq.decoder_input(h), vq.quantize(h)[0])


def test_vq_rejects_wrong_code_dim():
    with pytest.raises(ConfigError, match="code_dim"):
        VectorQuantizer(8, 3)(torch.randn(1, 4, 2, 2))
