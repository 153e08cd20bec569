"""PatchGAN discriminator: architecture, output sizes, init statistics, norms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentgen.autoencoders.discriminator import PatchGANDiscriminator
from latentgen.errors import ConfigError


@pytest.mark.parametrize(
    ("size", "n_layers", "expected"),
    [(32, 3, 2), (64, 3, 6), (256, 3, 30), (32, 2, 6), (64, 2, 14)],
)
def test_output_shape(size, n_layers, expected):
    d = PatchGANDiscriminator(in_channels=3, ndf=8, n_layers=n_layers)
    out = d(torch.randn(2, 3, size, size))
    assert out.shape == (2, 1, expected, expected)
    assert d.output_size(size) == expected


def test_pix2pix_architecture_and_parameter_count():
    d = PatchGANDiscriminator(in_channels=3, ndf=64, n_layers=3, norm="batch")
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in convs] == [
        (3, 64, 2),
        (64, 128, 2),
        (128, 256, 2),
        (256, 512, 1),
        (512, 1, 1),
    ]
    assert all(c.kernel_size == (4, 4) and c.padding == (1, 1) for c in convs)
    assert [c.bias is not None for c in convs] == [True, False, False, False, True]
    assert all(m.negative_slope == 0.2 for m in d.modules() if isinstance(m, nn.LeakyReLU))
    # 3*64*16+64 + 64*128*16 + 128*256*16 + 256*512*16 + 512*16+1 + BN (2*(128+256+512))
    assert sum(p.numel() for p in d.parameters()) == 2_765_633


def test_channels_cap_at_8_ndf():
    d = PatchGANDiscriminator(in_channels=1, ndf=4, n_layers=5, norm="none")
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 16, 32, 32, 32, 1]
    assert all(c.bias is not None for c in convs)  # no norm -> biases


def test_init_statistics():
    torch.manual_seed(0)
    d = PatchGANDiscriminator(in_channels=3, ndf=64, n_layers=3, norm="batch")
    w = torch.cat([m.weight.flatten() for m in d.modules() if isinstance(m, nn.Conv2d)])
    assert abs(w.mean().item()) < 1e-3 and abs(w.std().item() - 0.02) < 5e-4
    bn = [m for m in d.modules() if isinstance(m, nn.BatchNorm2d)]
    g = torch.cat([m.weight for m in bn])
    assert abs(g.mean().item() - 1.0) < 5e-3 and abs(g.std().item() - 0.02) < 5e-3
    assert all(torch.count_nonzero(m.bias) == 0 for m in bn)
    assert all(torch.count_nonzero(m.bias) == 0 for m in d.modules() if isinstance(m, nn.Conv2d) and m.bias is not None)


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_norms_run_and_backprop(norm):
    d = PatchGANDiscriminator(in_channels=3, ndf=16, n_layers=2, norm=norm)
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    d(x).mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in d.parameters())


def test_group_norm_is_batch_independent():
    d = PatchGANDiscriminator(in_channels=3, ndf=16, n_layers=2, norm="group").train()
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(d(x)[:1], d(x[:1]), rtol=1e-5, atol=1e-6)


def test_batchnorm_converts_to_syncbatchnorm():
    # What Lightning's `sync_batchnorm=True` (trainer=ddp / ddp_cpu) does to the module.
    d = nn.SyncBatchNorm.convert_sync_batchnorm(PatchGANDiscriminator(ndf=8, n_layers=3, norm="batch"))
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in d.modules()) == 3
    assert not any(type(m) is nn.BatchNorm2d for m in d.modules())


def test_bad_config():
    with pytest.raises(ConfigError, match="discriminator.norm"):
        PatchGANDiscriminator(norm="layer")
    with pytest.raises(ConfigError, match="n_layers"):
        PatchGANDiscriminator(n_layers=0)
