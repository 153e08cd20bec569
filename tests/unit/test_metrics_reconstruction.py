"""PSNR / SSIM / LPIPS per sample: parity with torchmetrics, conventions, aggregation."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from latentgen.errors import DataError
from latentgen.metrics.reconstruction import ReconstructionMetrics, psnr_per_sample, ssim_per_sample


def _pair(n=6, size=24, noise=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    y = (x + noise * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    return y, x  # (reconstruction, original) in [-1, 1]


def test_psnr_matches_torchmetrics_on_unit_range():
    rec, orig = _pair()
    ours = psnr_per_sample(rec, orig)
    ref = peak_signal_noise_ratio((rec + 1) / 2, (orig + 1) / 2, data_range=1.0, reduction="none", dim=(1, 2, 3))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)
    # the same number as data range 2 on [-1, 1]
    ref2 = peak_signal_noise_ratio(rec, orig, data_range=2.0, reduction="none", dim=(1, 2, 3))
    torch.testing.assert_close(ours, ref2, rtol=1e-5, atol=1e-4)
    assert psnr_per_sample(orig, orig).tolist() == pytest.approx([100.0] * 6)  # MSE floor 1e-10


def test_ssim_matches_torchmetrics_per_sample():
    rec, orig = _pair(n=3, size=32)
    ours = ssim_per_sample(rec, orig)
    assert ours.shape == (3,)
    for i in range(3):
        ref = structural_similarity_index_measure((rec[i : i + 1] + 1) / 2, (orig[i : i + 1] + 1) / 2, data_range=1.0)
        assert float(ours[i]) == pytest.approx(float(ref), rel=1e-5)
    assert ssim_per_sample(orig, orig).tolist() == pytest.approx([1.0] * 3, abs=1e-5)


def test_uint8_inputs_and_quantization():
    rec, orig = _pair(n=2)

    def u8(t):
        return ((t + 1) * 127.5).round().to(torch.uint8)

    torch.testing.assert_close(psnr_per_sample(u8(rec), u8(orig)), psnr_per_sample(rec, orig, quantize=True))
    with pytest.raises(DataError, match="both be"):
        psnr_per_sample(rec, orig[:1])


def test_metric_mean_std_and_lpips_callable():
    rec, orig = _pair(n=8)
    calls = []

    def fake_lpips(x, y):
        calls.append((x.min().item(), x.max().item()))
        return (x - y).abs().mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)  # LPIPS-style (B, 1, 1, 1)

    m = ReconstructionMetrics(lpips=fake_lpips)
    m.update(rec[:5], orig[:5])
    m.update(rec[5:], orig[5:])
    out = m.compute()
    p = psnr_per_sample(rec, orig).double()
    assert out["num_samples"] == 8
    assert out["psnr_mean"] == pytest.approx(float(p.mean())) and out["psnr_std"] == pytest.approx(float(p.std()))
    s = ssim_per_sample(rec, orig).double()
    assert out["ssim_mean"] == pytest.approx(float(s.mean()), rel=1e-6)
    assert out["lpips_mean"] == pytest.approx(float((rec - orig).abs().mean(dim=(1, 2, 3)).mean()), rel=1e-5)
    assert all(-1.0 <= lo and hi <= 1.0 for lo, hi in calls)  # LPIPS sees [-1, 1]
    no_lpips = ReconstructionMetrics()
    no_lpips.update(rec, orig)
    assert "lpips_mean" not in no_lpips.compute()
