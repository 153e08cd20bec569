"""latentgen's UNet <-> diffusers' UNet2DModel / UNet2DConditionModel: forward parity to 1e-5 with random weights,
the time convention (t = (k + 1) / T vs diffusers' k), class embeddings, the way back, and refusals."""

from __future__ import annotations

import pytest
import torch

from latentgen.conditioning import Conditioning
from latentgen.errors import ConfigError
from latentgen.interop.diffusers_unet import diffusers_unet_config, unet_from_diffusers, unet_to_diffusers
from latentgen.networks import UNet

diffusers = pytest.importorskip("diffusers")

BASE = dict(in_channels=4, out_channels=4, ch=32, ch_mult=(1, 2), num_res_blocks=1, input_size=8)


def make(**kw) -> UNet:
    torch.manual_seed(0)
    unet = UNet(**{**BASE, **kw}).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move the zero-initialized layers away from zero
        for p in unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return unet


def inputs(b: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randn(b, 4, 8, 8, generator=g), torch.tensor([0, 417, 999])[:b]


@pytest.mark.parametrize(
    "kw",
    [
        dict(attention_type="plain", attention_resolutions=[4]),
        dict(attention_type="plain", attention_resolutions=[8, 4], num_res_blocks=2, scale_shift_norm=False),
        dict(attention_type="plain", mid_attention=False, head_channels=16),
    ],
    ids=["plain", "plain_additive_2res", "plain_no_mid_attention"],
)
def test_plain_unet_is_diffusers_unet2dmodel(kw):
    unet = make(**kw)
    model = unet_to_diffusers(unet, time_shift=1)
    assert type(model).__name__ == "UNet2DModel"
    x, k = inputs()
    with torch.no_grad():
        ours = unet(x, (k + 1).float() / 1000)  # latentgen evaluates index k at t = (k + 1) / T
        theirs = model(x, k).sample  # diffusers passes k
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def test_time_shift_zero_is_flow_matching_time():
    unet = make(attention_type="plain")
    model = unet_to_diffusers(unet, time_shift=0)
    x, _ = inputs()
    sigma = torch.tensor([1.0, 0.55, 0.001])
    with torch.no_grad():
        torch.testing.assert_close(model(x, sigma * 1000).sample, unet(x, sigma), atol=1e-5, rtol=0)


def test_without_the_time_shift_the_outputs_differ():
    """The +1 of t = (k + 1) / T matters: an export that ignored it would not be the same model."""
    unet = make(attention_type="plain")
    x, k = inputs()
    with torch.no_grad():
        diff = unet_to_diffusers(unet, time_shift=0)(x, k).sample - unet(x, (k + 1).float() / 1000)
    assert diff.abs().max() > 1e-3


def test_class_vector_becomes_diffusers_class_embedding():
    unet = make(attention_type="plain", vector_dim=24)
    table = torch.randn(11, 24, generator=torch.Generator().manual_seed(3))  # 10 classes + the null class
    model = unet_to_diffusers(unet, time_shift=1, class_table=table)
    assert model.config.num_class_embeds == 11
    x, k = inputs()
    labels = torch.tensor([3, 10, 0])
    with torch.no_grad():
        ours = unet(x, (k + 1).float() / 1000, Conditioning(vector=table[labels]))
        theirs = model(x, k, class_labels=labels).sample
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kw", [dict(), dict(transformer_depth=2, num_heads=2, head_channels=None)])
def test_transformer_unet_is_diffusers_unet2dconditionmodel(kw):
    unet = make(attention_type="transformer", context_dim=12, attention_resolutions=[4], **kw)
    model = unet_to_diffusers(unet, time_shift=1)
    assert type(model).__name__ == "UNet2DConditionModel"
    x, k = inputs()
    g = torch.Generator().manual_seed(4)
    context = torch.randn(3, 5, 12, generator=g)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [True] * 4 + [False]])
    with torch.no_grad():
        ours = unet(x, (k + 1).float() / 1000, Conditioning(context=context, context_mask=mask))
        theirs = model(x, k, encoder_hidden_states=context, encoder_attention_mask=mask.long()).sample
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kw", [dict(attention_type="plain", attention_resolutions=[4]), dict(context_dim=12)])
def test_diffusers_unet_comes_back_as_the_same_latentgen_unet(kw):
    unet = make(**kw)
    back = unet_from_diffusers(unet_to_diffusers(unet, time_shift=1), time_shift=1)
    assert diffusers_unet_config(back) == diffusers_unet_config(unet)
    for key, value in unet.state_dict().items():
        torch.testing.assert_close(back.state_dict()[key], value, atol=1e-6, rtol=0, msg=key)


@pytest.mark.parametrize(
    "kw,option",
    [
        (dict(attention_type="plain", resblock_updown=True), "resblock_updown"),
        (dict(attention_type="transformer"), "context_dim"),
        (dict(attention_type="plain", ch=16, head_channels=16), "ch"),  # 16 channels: 16 groups, 32 elsewhere
        (dict(attention_type="plain", num_heads=2, head_channels=None, attention_resolutions=[8, 4]), "head_channels"),
        (dict(context_dim=12, mid_attention=False, attention_resolutions=[4]), "mid_attention"),
    ],
)
def test_unmappable_options_are_refused_by_name(kw, option):
    with pytest.raises(ConfigError, match=option):
        unet_to_diffusers(make(**kw), time_shift=1)


def test_plain_attention_refuses_cross_attention_tokens():
    with pytest.raises(ConfigError, match="attention_type=plain"):
        make(attention_type="plain", context_dim=12)
