"""OmegaConf resolvers used by ``conf/`` and the structured checks that run before anything is built.

Resolvers keep every number in one place: e.g. the denoiser's input size is
``${floordiv:${data.resolution},${autoencoder.downsample_factor}}``.
"""

from __future__ import annotations

from omegaconf import OmegaConf


def _floordiv(a: int, b: int) -> int:
    return int(a) // int(b)


def _mul(*xs: float) -> float:
    out = 1
    for x in xs:
        out = out * x
    return out


def _add(*xs: float) -> float:
    return sum(xs)


def _out_channels(latent_channels: int, learn_variance: bool) -> int:
    """Denoiser output channels: twice the latent channels when the objective learns the variance."""
    return int(latent_channels) * (2 if learn_variance else 1)


def _log2(x: int) -> int:
    x = int(x)
    if x <= 0 or x & (x - 1):
        raise ValueError(f"log2 resolver: {x} is not a power of two")
    return x.bit_length() - 1


RESOLVERS = {
    "floordiv": _floordiv,
    "mul": _mul,
    "add": _add,
    "out_channels": _out_channels,
    "log2": _log2,
}


def register_resolvers() -> None:
    """Register latentgen's resolvers (idempotent; safe to call from every entry point and test)."""
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
