"""The UNet denoiser: shapes, zero init, gradient flow, conditioning paths, checkpointing, precision, configs."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from latentgen.conditioning import Conditioning
from latentgen.errors import ConfigError
from latentgen.networks import UNet

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

# Small enough for one CPU thread: 2 levels (8x8 -> 4x4), 16/32 channels.
BASE = dict(in_channels=4, out_channels=4, ch=16, ch_mult=(1, 2), num_res_blocks=1, input_size=8, head_channels=8)


def make(**kw) -> UNet:
    return UNet(**{**BASE, **kw})


def inputs(b: int = 2, c: int = 4, s: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, s, s, generator=g), torch.rand(b, generator=g)


def perturb_(model: torch.nn.Module, std: float = 0.1) -> None:
    """Give the zero-initialized layers (final conv, ResBlock conv2, transformer proj_out) random values."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


def ctx(b: int = 2, m: int = 5, d: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, m, d, generator=torch.Generator().manual_seed(seed))


# --- shapes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "cond_fn", "out_c"),
    [
        ({}, lambda: None, 4),
        ({"attention_resolutions": [8, 4]}, lambda: Conditioning(), 4),
        ({"out_channels": 8}, lambda: None, 8),  # learned variance: 2x latent channels
        ({"context_dim": 12, "attention_resolutions": [4]}, lambda: Conditioning(context=ctx()), 4),
        (
            {"context_dim": 12, "attention_resolutions": [8]},
            lambda: Conditioning(context=ctx(), context_mask=torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]).bool()),
            4,
        ),
        ({"vector_dim": 7}, lambda: Conditioning(vector=torch.randn(2, 7)), 4),
        ({"in_channels": 7}, lambda: Conditioning(concat=torch.randn(2, 3, 8, 8)), 4),
        ({"resblock_updown": True, "ch_mult": (1, 2, 2)}, lambda: None, 4),
        ({"num_heads": 2, "head_channels": None, "attention_resolutions": [4]}, lambda: None, 4),
        ({"transformer_depth": 2, "attention_resolutions": [4], "scale_shift_norm": False}, lambda: None, 4),
    ],
    ids=[
        "plain",
        "self-attn",
        "learned-var",
        "context",
        "context-mask",
        "vector",
        "concat",
        "updown",
        "num-heads",
        "depth2-additive",
    ],
)
def test_output_shape(kw, cond_fn, out_c):
    model = make(**kw)
    x, t = inputs()
    y = model(x, t, cond_fn())
    assert y.shape == (2, out_c, 8, 8)
    assert y.dtype == torch.float32


def test_scalar_time_is_broadcast():
    model = make()
    perturb_(model)
    x, t = inputs()
    torch.testing.assert_close(model(x, torch.tensor(0.3)), model(x, torch.full((2,), 0.3)))


def test_output_is_zero_at_init():
    model = make(attention_resolutions=[4], context_dim=12, vector_dim=7)
    x, t = inputs()
    y = model(x, t, Conditioning(context=ctx(), vector=torch.randn(2, 7)))
    assert torch.count_nonzero(y) == 0


# --- gradients ----------------------------------------------------------------------------------------


def test_gradient_reaches_every_parameter():
    """Zero-initialized layers open up in turn (final conv, then ResBlock conv2 / proj_out, then the rest):
    after two AdamW steps from init, every parameter gets a nonzero gradient."""
    model = make(in_channels=6, attention_resolutions=[8, 4], context_dim=12, vector_dim=7, resblock_updown=True)
    x, t = inputs()
    cond = Conditioning(context=ctx(), vector=torch.randn(2, 7), concat=torch.randn(2, 2, 8, 8))
    target = torch.randn(2, 4, 8, 8)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        (model(x, t, cond) - target).square().mean().backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        opt.step()
    dead = [n for n, g in grads.items() if g is None or not torch.isfinite(g).all() or g.abs().sum() == 0]
    assert not dead, f"parameters without gradient: {dead}"


def test_gradient_checkpointing_matches():
    model = make(attention_resolutions=[8, 4], context_dim=12, vector_dim=7)
    perturb_(model)
    ckpt = copy.deepcopy(model)
    ckpt.gradient_checkpointing = True
    x, t = inputs()
    cond = Conditioning(context=ctx(), vector=torch.randn(2, 7))
    outs, grads = [], []
    for m in (model, ckpt):
        m.train()
        y = m(x, t, cond)
        y.square().sum().backward()
        outs.append(y.detach())
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    torch.testing.assert_close(outs[0], outs[1])
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-6, msg=n)


# --- conditioning paths -------------------------------------------------------------------------------


def test_cross_attention_uses_context():
    model = make(attention_resolutions=[4], context_dim=12)
    perturb_(model)
    x, t = inputs()
    y1 = model(x, t, Conditioning(context=ctx(seed=1)))
    y2 = model(x, t, Conditioning(context=ctx(seed=2)))
    assert (y1 - y2).abs().max() > 1e-3
    assert model(x, t).abs().max() > 0  # no context: self-attention only, still a valid call


def test_masked_context_tokens_are_ignored():
    model = make(attention_resolutions=[8, 4], context_dim=12)
    perturb_(model)
    x, t = inputs()
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 1, 0, 1]]).bool()  # (B, M) True = attend
    c1 = ctx(seed=1)
    c2 = torch.where(mask[:, :, None], c1, ctx(seed=2))  # masked-out tokens replaced
    y1 = model(x, t, Conditioning(context=c1, context_mask=mask))
    y2 = model(x, t, Conditioning(context=c2, context_mask=mask))
    torch.testing.assert_close(y1, y2)
    y3 = model(x, t, Conditioning(context=c2))  # without the mask the replaced tokens count
    assert (y1 - y3).abs().max() > 1e-3


def test_vector_and_concat_change_output():
    model = make(in_channels=6, vector_dim=7)
    perturb_(model)
    x, t = inputs()
    v, cc = torch.randn(2, 7), torch.randn(2, 2, 8, 8)
    y = model(x, t, Conditioning(vector=v, concat=cc))
    assert (y - model(x, t, Conditioning(vector=v + 1, concat=cc))).abs().max() > 1e-3
    assert (y - model(x, t, Conditioning(vector=v, concat=cc + 1))).abs().max() > 1e-3


def test_time_changes_output():
    model = make()
    perturb_(model)
    x, _ = inputs()
    assert (model(x, torch.full((2,), 0.1)) - model(x, torch.full((2,), 0.9))).abs().max() > 1e-3


# --- precision and memory format ----------------------------------------------------------------------


def test_channels_last_matches_fp32():
    model = make(attention_resolutions=[8, 4], context_dim=12)
    perturb_(model)
    cl = make(attention_resolutions=[8, 4], context_dim=12, channels_last=True)
    cl.load_state_dict(model.state_dict())
    assert cl.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    x, t = inputs()
    cond = Conditioning(context=ctx())
    ref = model(x, t, cond)
    y = cl(x, t, cond)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)
    y.sum().backward()  # the backward runs in channels-last too
    assert all(p.grad is not None for p in cl.parameters())


def test_bf16_autocast_is_close_to_fp32():
    model = make(attention_resolutions=[8, 4], context_dim=12, channels_last=True)
    perturb_(model)
    x, t = inputs()
    cond = Conditioning(context=ctx())
    ref = model(x, t, cond)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x, t, cond)
        y.float().square().mean().backward()
    assert y.dtype == torch.float32  # returned in the dtype of x_t
    rel = (y - ref).norm() / ref.norm()
    assert rel < 0.05, f"bf16 relative error {rel:.3f}"


# --- errors -------------------------------------------------------------------------------------------


def test_mismatched_in_channels_is_a_clear_error():
    model = make(in_channels=4)
    x, t = inputs()
    with pytest.raises(ConfigError, match=r"denoiser\.in_channels=4 .* 7 channels .*4 latent \+ 3 concatenated"):
        model(x, t, Conditioning(concat=torch.randn(2, 3, 8, 8)))


def test_context_without_context_dim_is_a_clear_error():
    model = make()
    x, t = inputs()
    with pytest.raises(ConfigError, match=r"denoiser\.context_dim is null"):
        model(x, t, Conditioning(context=ctx()))
    with pytest.raises(ConfigError, match=r"width 12 but denoiser\.context_dim=9"):
        make(context_dim=9)(x, t, Conditioning(context=ctx()))


def test_vector_mismatch_is_a_clear_error():
    x, t = inputs()
    with pytest.raises(ConfigError, match=r"denoiser\.vector_dim is null"):
        make()(x, t, Conditioning(vector=torch.randn(2, 7)))
    with pytest.raises(ConfigError, match=r"denoiser\.vector_dim=7 but the conditioning has no cond\.vector"):
        make(vector_dim=7)(x, t, None)


def test_bad_architecture_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"input_size=6 is not divisible by .*=4"):
        make(input_size=6, ch_mult=(1, 2, 2))
    with pytest.raises(ConfigError, match=r"head_channels=12 does not divide"):
        make(attention_resolutions=[8], head_channels=12)
    with pytest.raises(ConfigError, match=r"no transformer block"):
        make(context_dim=12, mid_attention=False)
    with pytest.warns(UserWarning, match=r"attention_resolutions \[16\] match no feature-map size"):
        make(attention_resolutions=[16, 8])


# --- determinism --------------------------------------------------------------------------------------


def test_deterministic():
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        model = make(attention_resolutions=[4], context_dim=12)
        perturb_(model)
        x, t = inputs()
        outs.append(model(x, t, Conditioning(context=ctx())))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    torch.testing.assert_close(model(x, t, Conditioning(context=ctx())), outs[1], rtol=0, atol=0)


# --- configs ------------------------------------------------------------------------------------------


def compose_denoiser(name: str, **stub_overrides):
    """Compose conf/denoiser/<name>.yaml with stub nodes for the keys it interpolates."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from latentgen.config import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name=None, overrides=[f"+denoiser={name}"])
    OmegaConf.set_struct(cfg, False)
    stub = OmegaConf.create(
        {
            "autoencoder": {"latent_channels": 4, "downsample_factor": 4},
            "data": {"resolution": 32},
            "conditioner": {"concat_channels": 0, "context_dim": None, "vector_dim": None},
            "objective": {"learn_variance": False},
        }
    )
    return OmegaConf.merge(cfg, stub, OmegaConf.create(stub_overrides))


@pytest.mark.parametrize(
    ("name", "min_params", "max_params"),
    [("unet_tiny", 0.2e6, 0.5e6), ("unet_small", 2e6, 5e6), ("unet_mid", 5e6, 10e6)],
)
@pytest.mark.parametrize("conditioned", [False, True], ids=["uncond", "cond"])
def test_cpu_configs_instantiate_and_run(name, min_params, max_params, conditioned):
    from hydra.utils import instantiate

    over = {}
    if conditioned:  # class tokens + pooled vector + 1 concatenated channel + learned variance
        over = {
            "conditioner": {"concat_channels": 1, "context_dim": 16, "vector_dim": 8},
            "objective": {"learn_variance": True},
        }
    cfg = compose_denoiser(name, **over)
    model = instantiate(cfg.denoiser)
    assert isinstance(model, UNet)
    n = sum(p.numel() for p in model.parameters())
    if not conditioned:
        assert min_params <= n <= max_params, f"{name}: {n / 1e6:.2f}M params"
    x, t = inputs(2, 4, 8)
    cond = None
    if conditioned:
        cond = Conditioning(context=torch.randn(2, 3, 16), vector=torch.randn(2, 8), concat=torch.randn(2, 1, 8, 8))
    y = model(x, t, cond)
    assert y.shape == (2, 8 if conditioned else 4, 8, 8)


def test_mid_config_attends_at_half_the_input_size():
    from hydra.utils import instantiate

    for res, expect in [(32, [4]), (128, [16])]:  # input sizes 8 and 32
        cfg = compose_denoiser("unet_mid", data={"resolution": res})
        assert list(cfg.denoiser.attention_resolutions) == expect
    model = instantiate(compose_denoiser("unet_mid").denoiser)
    assert model.input_blocks[2].attn is None and model.input_blocks[3].attn is not None  # level 0: 8x8, 1: 4x4


# LDM Tab. 13: f -> (latent channels, the denoiser preset with the paper's number of levels); each about
# 395M parameters with 512-d class tokens
LDM = {1: (3, 6), 2: (2, 5), 4: (3, 4), 8: (4, 3), 16: (8, 3), 32: (32, 3)}


@pytest.mark.parametrize("f", sorted(LDM))
def test_ldm_configs_build_on_meta(f):
    from hydra.utils import instantiate

    channels, levels = LDM[f]
    cfg = compose_denoiser(
        f"unet_ldm_{levels}levels",
        autoencoder={"latent_channels": channels, "downsample_factor": f},
        data={"resolution": 256},
        conditioner={"context_dim": 512},
    )
    with torch.device("meta"):
        model = instantiate(cfg.denoiser)
    n = sum(p.numel() for p in model.parameters())
    assert 350e6 <= n <= 450e6, f"LDM-{f}: {n / 1e6:.0f}M params"  # paper: ~395M each (we get 401-411M)
    n_levels = len(cfg.denoiser.ch_mult)
    with_attn = {b.res.out_channels for b in model.input_blocks if b.attn is not None}
    assert len(with_attn) >= 1
    assert sum(b.attn is not None for b in model.input_blocks) == 3 * 2  # 3 CA sizes x 2 ResBlocks
    assert model.input_size == 256 // f and n_levels >= 3 and math.isfinite(n)
    # the paper's attention sizes (32, 16, 8 for f <= 8; 16, 8, 4 and 8, 4, 2 for f = 16, 32)
    expected_attention = [32, 16, 8] if f <= 8 else [256 // f, 128 // f, 64 // f]
    assert sorted(cfg.denoiser.attention_resolutions, reverse=True) == expected_attention


# --- torch.compile ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_compiles_without_graph_breaks():
    """fullgraph=True fails on any graph break; aot_eager traces forward and backward without a C++ compiler.
    Gradient checkpointing and every conditioning path are on (~20 s)."""
    model = make(attention_resolutions=[4], context_dim=12, vector_dim=7, in_channels=6, gradient_checkpointing=True)
    perturb_(model)
    x, t = inputs()
    cond = Conditioning(
        context=ctx(),
        context_mask=torch.ones(2, 5, dtype=torch.bool),
        vector=torch.randn(2, 7),
        concat=torch.randn(2, 2, 8, 8),
    )
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    y = compiled(x, t, cond)
    y.square().sum().backward()
    torch.testing.assert_close(y, model(x, t, cond), rtol=1e-5, atol=1e-6)
    assert all(p.grad is not None for p in model.parameters())


def test_plain_attention_unet_has_no_feed_forward_and_starts_as_transformer_one_does():
    """attention_type=plain: AttentionBlocks (norm + self-attention, zero-init output: identity at init) instead of
    SpatialTransformers; fewer parameters; the default stays the transformer."""
    from latentgen.nn import AttentionBlock, SpatialTransformer

    plain, transformer = make(attention_type="plain", attention_resolutions=[4]), make(attention_resolutions=[4])
    assert any(isinstance(m, AttentionBlock) for m in plain.modules())
    assert not any(isinstance(m, SpatialTransformer) for m in plain.modules())
    assert not any(isinstance(m, AttentionBlock) for m in make().modules())
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(plain) < n(transformer)
    block = AttentionBlock(16, 2, 8)
    x = torch.randn(2, 16, 4, 4)
    torch.testing.assert_close(block(x), x)
    perturb_(plain)
    x_t, t = inputs()
    assert plain(x_t, t).shape == x_t.shape


def test_plain_attention_rejects_context_and_unknown_types():
    with pytest.raises(ConfigError, match="attention_type=plain"):
        make(attention_type="plain", context_dim=12)
    with pytest.raises(ConfigError, match="attention_type"):
        make(attention_type="linear")
