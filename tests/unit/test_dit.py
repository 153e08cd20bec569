"""The DiT denoiser: contract, the paper's sizes (Table 1) on the meta device, and layers' invariants."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from latentgen.conditioning import Conditioning
from latentgen.errors import ConfigError
from latentgen.networks import DiT
from latentgen.nn.dit_blocks import PatchEmbed, sincos_pos_embed_2d, unpatchify


def tiny(**kw) -> DiT:
    args = dict(in_channels=4, out_channels=4, input_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=4)
    args.update(kw)
    return DiT(**args)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (the zero-initialised layers would hide most of the network)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


@pytest.mark.parametrize("p", [1, 2, 4, 8])
def test_patchify_unpatchify_is_the_identity_and_output_has_input_shape(p):
    x = torch.randn(2, 3, 16, 16)
    tokens = x.unfold(2, p, p).unfold(3, p, p)  # (B, C, h, w, p, p)
    tokens = tokens.permute(0, 2, 3, 4, 5, 1).reshape(2, (16 // p) ** 2, p * p * 3)  # (B, N, p*p*C)
    assert torch.equal(unpatchify(tokens, 3, p, 16 // p, 16 // p), x)
    net = tiny(input_size=16, patch_size=p, out_channels=8)
    assert net(torch.randn(2, 4, 16, 16), torch.rand(2)).shape == (2, 8, 16, 16)


def test_patch_embed_orders_tokens_row_major():
    pe = PatchEmbed(1, 4, 2)
    with torch.no_grad():
        pe.proj.weight.zero_()
        pe.proj.weight[0, 0, 0, 0] = 1.0
        pe.proj.bias.zero_()
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert pe(x)[0, :, 0].tolist() == [0.0, 2.0, 8.0, 10.0]  # top-left pixel of patches (0,0), (0,1), (1,0), (1,1)


def test_fresh_dit_is_the_zero_function_and_blocks_are_the_identity():
    net = tiny(context_dim=8, vector_dim=16)
    cond = Conditioning(context=torch.randn(2, 3, 8), vector=torch.randn(2, 16))
    assert torch.equal(net(torch.randn(2, 4, 8, 8), torch.rand(2), cond), torch.zeros(2, 4, 8, 8))
    tokens, c = torch.randn(2, 16, 32), torch.randn(2, 32)
    assert torch.equal(net.blocks[0](tokens, c, cond.context), tokens)  # adaLN-Zero + zero cross-attention


def test_sincos_position_embedding_first_half_encodes_the_column():
    emb = sincos_pos_embed_2d(8, 2, 3)  # (6, 8): tokens (i, j) row-major
    assert emb.shape == (6, 8)
    assert torch.equal(emb[0, :4], emb[3, :4])  # same column j=0, rows 0 and 1
    assert torch.equal(emb[0, 4:], emb[1, 4:])  # same row i=0, columns 0 and 1
    assert emb[0, :2].tolist() == [0.0, 0.0]  # sin(0)


def test_conditioning_changes_the_output_and_scalar_t_broadcasts():
    net = randomize(tiny(context_dim=8, vector_dim=16, qk_norm=True))
    x = torch.randn(2, 4, 8, 8)
    cond = Conditioning(context=torch.randn(2, 3, 8), vector=torch.randn(2, 16))
    out = net(x, torch.full((2,), 0.3), cond)
    assert torch.allclose(net(x, torch.tensor(0.3), cond), out)
    other = Conditioning(context=torch.randn(2, 3, 8), vector=cond.vector)
    assert not torch.allclose(net(x, torch.full((2,), 0.3), other), out)
    masked = Conditioning(
        context=cond.context, context_mask=torch.tensor([[True, False, False]] * 2), vector=cond.vector
    )
    assert not torch.allclose(net(x, torch.full((2,), 0.3), masked), out)


def test_concat_channels_go_through_in_channels():
    net = randomize(tiny(in_channels=5))
    out = net(torch.randn(2, 4, 8, 8), torch.rand(2), Conditioning(concat=torch.randn(2, 1, 8, 8)))
    assert out.shape == (2, 4, 8, 8)
    with pytest.raises(ConfigError, match="in_channels=5"):
        net(torch.randn(2, 4, 8, 8), torch.rand(2))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    a = randomize(tiny(vector_dim=16))
    b = randomize(tiny(vector_dim=16, gradient_checkpointing=True))
    x, t, cond = torch.randn(2, 4, 8, 8), torch.rand(2), Conditioning(vector=torch.randn(2, 16))
    for net in (a, b):
        net.train()
        net(x, t, cond).square().sum().backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6)


def test_bf16_autocast_forward_and_backward_are_finite():
    net = randomize(tiny(context_dim=8, qk_norm=True))
    x = torch.randn(2, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, torch.rand(2), Conditioning(context=torch.randn(2, 3, 8)))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(input_size=10, patch_size=4), "does not divide"),
        (dict(hidden_size=30, num_heads=4), "not divisible"),
        (dict(vector_dim=16, vector_projection=False), "vector_projection=false"),
    ],
)
def test_bad_sizes_are_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        tiny(**kw)


def test_missing_or_unexpected_conditions_are_config_errors():
    with pytest.raises(ConfigError, match="vector_dim=16"):
        tiny(vector_dim=16)(torch.randn(1, 4, 8, 8), torch.rand(1))
    with pytest.raises(ConfigError, match="context_dim is null"):
        tiny()(torch.randn(1, 4, 8, 8), torch.rand(1), Conditioning(context=torch.randn(1, 2, 8)))
    with pytest.raises(ConfigError, match="built for 8x8"):
        tiny()(torch.randn(1, 4, 16, 16), torch.rand(1))


# DiT Table 1 (256 px, 32x32x4 latents, p=2): (hidden, depth, heads) -> (parameters in M, GFLOPs).
TABLE1 = {
    "S": ((384, 12, 6), 33.0, 6.06),
    "B": ((768, 12, 12), 130.0, 23.0),
    "L": ((1024, 24, 16), 458.0, 80.7),
    "XL": ((1152, 28, 16), 675.0, 118.6),
}


@pytest.mark.parametrize("name", list(TABLE1))
def test_published_sizes_match_dit_table1_on_the_meta_device(name):
    """Parameters within 1% (the paper rounds: measured 32.87M, 130.32M, 457.84M, 674.83M) and GFLOPs within 0.5%
    (measured 6.06, 23.01, 80.70, 118.62).

    The class-conditional DiT/2 with learned variance (out 8 channels) plus the 1000 + 1 class table of the
    class conditioner (DiT's LabelEmbedder; the fixed position embedding is not a parameter here). FLOPs are
    counted with ``torch.utils.flop_counter`` (matmuls, convolutions, SDPA) for one sample; the paper
    counts a multiply-add as one FLOP, the counter as two, hence the halving.
    """
    (hidden, depth, heads), params_m, gflops = TABLE1[name]
    with torch.device("meta"):
        net = DiT(4, 8, 32, 2, hidden, depth, heads, vector_dim=hidden, vector_projection=False)
        x, t, vec = torch.randn(1, 4, 32, 32), torch.rand(1), torch.randn(1, hidden)
    n_params = sum(p.numel() for p in net.parameters()) + 1001 * hidden
    assert abs(n_params / 1e6 - params_m) / params_m < 0.01, n_params
    with FlopCounterMode(display=False) as counter:
        net(x, t, Conditioning(vector=vec))
    measured = counter.get_total_flops() / 2 / 1e9
    assert abs(measured - gflops) / gflops < 0.005, measured
