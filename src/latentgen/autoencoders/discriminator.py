"""PatchGAN discriminator (Isola et al. 2017, pix2pix; as used by VQGAN/LDM: "NLayerDiscriminator").

Architecture (docs/first_stage.md, "PatchGAN discriminator"), with 4x4 kernels and padding 1:

    conv(C -> ndf, stride 2) + LeakyReLU(0.2)
    (n_layers - 1) x [conv(stride 2) + norm + LeakyReLU(0.2)], channels ndf * min(2^n, 8)
    conv(stride 1) + norm + LeakyReLU(0.2),                    channels ndf * min(2^n_layers, 8)
    conv(-> 1, stride 1)                                        patch logits

Each output logit sees a 70x70 receptive field for n_layers=3. Spatial size: each stride-2 conv maps
H -> H/2 (H even), each stride-1 4x4 conv with padding 1 maps H -> H-1; so 256 px -> 30x30,
64 px -> 6x6, 32 px -> 2x2 (n_layers=3).

Norms (``norm``):

- ``"batch"``: BatchNorm2d, as in pix2pix/LDM. Under DDP it must be SyncBatchNorm; the ``trainer=ddp`` /
  ``ddp_cpu`` configs set Lightning's ``sync_batchnorm: true``, which converts every BatchNorm of the
  LightningModule (this one included) before wrapping it. Note that D is called separately on real and on
  fake batches, so their batch statistics are separate, as in LDM.
- ``"group"``: GroupNorm (32 groups, computed in fp32): no cross-process sync, independent of batch
  size; the choice for tiny per-GPU batches or when SyncBatchNorm is unwanted.
- ``"none"``: no normalisation (the convs then get a bias).

Init: conv weights N(0, 0.02), conv biases 0; norm weights N(1, 0.02), norm biases 0 (pix2pix's
``weights_init``).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from latentgen.errors import ConfigError
from latentgen.nn.norms import group_norm

__all__ = ["PatchGANDiscriminator"]

_NORMS: dict[str, Callable[[int], nn.Module]] = {
    "batch": lambda c: nn.BatchNorm2d(c),
    "group": lambda c: group_norm(c, 32),
    "none": lambda c: nn.Identity(),
}


class PatchGANDiscriminator(nn.Module):
    """Fully convolutional discriminator returning a map of patch logits, (B, 1, H', W').

    Args:
        in_channels: image channels.
        ndf: channels of the first conv.
        n_layers: number of stride-2 convs (3 in pix2pix/LDM: 70x70 patches).
        norm: "batch" | "group" | "none" (see the module docstring for DDP).
    """

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3, norm: str = "batch") -> None:
        super().__init__()
        if norm not in _NORMS:
            raise ConfigError(f"discriminator.norm={norm!r} is not one of {sorted(_NORMS)}")
        if n_layers < 1 or ndf < 1 or in_channels < 1:
            raise ConfigError(
                f"discriminator: n_layers ({n_layers}), ndf ({ndf}) and in_channels ({in_channels}) must be >= 1"
            )
        self.in_channels, self.ndf, self.n_layers, self.norm = in_channels, ndf, n_layers, norm
        make_norm = _NORMS[norm]
        bias = norm == "none"  # a norm with an affine shift makes the conv bias redundant
        k, pad = 4, 1

        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, k, stride=2, padding=pad),
            nn.LeakyReLU(0.2),
        ]
        mult = 1
        for n in range(1, n_layers):  # stride-2 blocks, channels doubling up to 8 * ndf
            prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, k, stride=2, padding=pad, bias=bias),
                make_norm(ndf * mult),
                nn.LeakyReLU(0.2),
            ]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [  # stride-1 block
            nn.Conv2d(ndf * prev, ndf * mult, k, stride=1, padding=pad, bias=bias),
            make_norm(ndf * mult),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ndf * mult, 1, k, stride=1, padding=pad),  # patch logits
        ]
        self.main = nn.Sequential(*layers)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def output_size(self, size: int) -> int:
        """Side of the logit map for an input of side ``size``."""
        for _ in range(self.n_layers):
            size = (size + 2 - 4) // 2 + 1  # stride-2 conv
        return size - 2  # two stride-1 4x4 convs with padding 1: -1 each

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)  # (B, C, H, W) -> (B, 1, H', W') logits
