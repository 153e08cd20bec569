"""Normalization layers that stay in fp32 under bf16/fp16 autocast."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back to the input dtype.

    Normalization statistics are one of the numerically sensitive places under mixed precision
    (REFERENCE §6); computing them in fp32 costs little and avoids bf16 drift.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            w = None if self.weight is None else self.weight.float()
            b = None if self.bias is None else self.bias.float()
            y = F.group_norm(x.float(), self.num_groups, w, b, self.eps)
        return y.to(x.dtype)


def group_norm(channels: int, groups: int = 32, eps: float = 1e-6) -> GroupNorm32:
    """A GroupNorm32 with ``groups`` groups, reduced to a divisor of ``channels`` for tiny models."""
    g = math.gcd(channels, groups)
    return GroupNorm32(num_groups=g, num_channels=channels, eps=eps, affine=True)
