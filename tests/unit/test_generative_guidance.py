"""Classifier-free guidance: scale 1 / 0 endpoints, one batched forward, all channels, learned variance."""

from __future__ import annotations

import torch

from latentgen.conditioning.base import Conditioning
from latentgen.generative.guidance import CFGModelFn, classifier_free_guidance


class CountingDenoiser:
    """out = x * (1 + t) + w(cond) on every channel; w(cond) = per-sample vector broadcast to (C, H, W)."""

    def __init__(self, out_channels: int | None = None) -> None:
        self.calls: list[int] = []
        self.out_channels = out_channels

    def __call__(self, x, t, cond: Conditioning):
        self.calls.append(x.shape[0])
        ramp = torch.arange(1, x.shape[1] + 1).view(1, -1, 1, 1)  # (1, C, 1, 1): every channel depends on cond
        out = x * (1 + t.view(-1, 1, 1, 1)) + cond.vector.view(-1, 1, 1, 1) * ramp
        if self.out_channels is not None:  # learned variance: append C "variance" channels depending on cond
            out = torch.cat([out, torch.tanh(cond.vector.view(-1, 1, 1, 1)).expand_as(out)], dim=1)
        return out


def _setup(B=3, C=4):
    x = torch.randn(B, C, 2, 2)
    t = torch.rand(B)
    cond = Conditioning(vector=torch.randn(B, 1), context=torch.randn(B, 5, 8))
    uncond = Conditioning(vector=torch.zeros(B, 1), context=torch.zeros(B, 5, 8))
    return x, t, cond, uncond


def test_scale_one_is_conditional_with_one_forward():
    x, t, cond, uncond = _setup()
    den = CountingDenoiser()
    out = CFGModelFn(den, cond, uncond, scale=1.0)(x, t)
    torch.testing.assert_close(out, CountingDenoiser()(x, t, cond))
    assert den.calls == [3]


def test_scale_zero_is_unconditional():
    x, t, cond, uncond = _setup()
    den = CountingDenoiser()
    torch.testing.assert_close(CFGModelFn(den, cond, uncond, scale=0.0)(x, t), CountingDenoiser()(x, t, uncond))
    assert den.calls == [3]


def test_guidance_is_one_batched_forward_on_all_channels():
    x, t, cond, uncond = _setup(C=4)
    den = CountingDenoiser()
    s = 3.5
    out = CFGModelFn(den, cond, uncond, scale=s)(x, t)
    assert den.calls == [6]  # [uncond, cond] in one batch of 2B
    ref = CountingDenoiser()
    out_u, out_c = ref(x, t, uncond), ref(x, t, cond)
    expected = out_u + s * (out_c - out_u)
    torch.testing.assert_close(out, expected)
    # every channel moved by the guidance (DiT's first-3-channels trap)
    moved = (out - out_c).abs().amax(dim=(0, 2, 3))  # (C,)
    assert bool((moved > 1e-3).all()) and moved.numel() == 4
    torch.testing.assert_close(classifier_free_guidance(out_u, out_c, s), expected)


def test_learned_variance_guides_prediction_keeps_conditional_variance():
    x, t, cond, uncond = _setup(C=4)
    s = 2.0
    out = CFGModelFn(CountingDenoiser(out_channels=8), cond, uncond, scale=s, learn_variance=True)(x, t)
    ref = CountingDenoiser(out_channels=8)
    out_u, out_c = ref(x, t, uncond), ref(x, t, cond)
    assert out.shape == (3, 8, 2, 2)
    torch.testing.assert_close(out[:, :4], out_u[:, :4] + s * (out_c[:, :4] - out_u[:, :4]))
    torch.testing.assert_close(out[:, 4:], out_c[:, 4:])
