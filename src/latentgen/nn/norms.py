"""Normalization layers that stay in fp32 under bf16/fp16 autocast."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GroupNorm32(nn.GroupNorm):
    """GroupNorm whose statistics are computed in float32 under bf16/fp16 autocast, output in the input dtype.

    Normalization statistics are one of the numerically sensitive places under mixed precision
    (docs/pitfalls.md). Paths, all with fp32 statistics (chosen from dtype/device/layout only, so
    ``torch.compile`` sees no data-dependent branch):

    - fp32 input: a plain ``F.group_norm`` (no casts, no autocast context: the common case costs nothing extra);
    - low-precision, contiguous (NCHW) input on CPU: ``F.group_norm`` directly with the fp32 affine
      parameters. The CPU kernel accepts mixed dtypes and accumulates in fp32; it is ~2x faster than
      upcasting the activation and casting it back (measured on the AMX machine, bf16, (32,128,8,8));
    - otherwise (channels-last on CPU, where the mixed kernel is slower; GPUs): upcast to fp32, normalize
      with autocast off, cast back.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 or (x.device.type == "cpu" and x.is_contiguous()):
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        with torch.autocast(device_type=x.device.type, enabled=False):
            w = None if self.weight is None else self.weight.float()
            b = None if self.bias is None else self.bias.float()
            y = F.group_norm(x.float(), self.num_groups, w, b, self.eps)
        return y.to(x.dtype)


def group_norm(channels: int, groups: int = 32, eps: float = 1e-6) -> GroupNorm32:
    """A GroupNorm32 with ``groups`` groups, reduced to a divisor of ``channels`` for tiny models."""
    g = math.gcd(channels, groups)
    return GroupNorm32(num_groups=g, num_channels=channels, eps=eps, affine=True)
