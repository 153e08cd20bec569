"""What every denoiser checks of the input and conditioning it is called with: the latent plus the concatenated
channels must be the channels it was built for, and cross-attention tokens and the vector must be present exactly
when it was built for them, at the widths it was built for.

The checks depend only on shapes and None-ness, so they cause no graph breaks under ``torch.compile``.
"""

from __future__ import annotations

import torch

from latentgen.errors import ConfigError


def check_context_and_vector(
    context: torch.Tensor | None,
    vector: torch.Tensor | None,
    *,
    context_dim: int | None,
    vector_dim: int | None,
) -> None:
    """Raise a ConfigError naming the denoiser key to set when ``cond.context`` / ``cond.vector`` do not fit."""
    if context is not None and context_dim is None:
        raise ConfigError(
            "the conditioning has cross-attention tokens (cond.context) but denoiser.context_dim is null: "
            "set denoiser.context_dim to the token width (${conditioner.context_dim})"
        )
    if context is not None and context.shape[-1] != context_dim:
        raise ConfigError(f"cond.context has width {context.shape[-1]} but denoiser.context_dim={context_dim}")
    if vector is None and vector_dim is not None:
        raise ConfigError(
            f"denoiser.vector_dim={vector_dim} but the conditioning has no cond.vector: "
            "set denoiser.vector_dim=null or use a conditioner that gives a vector"
        )
    if vector is not None and vector_dim is None:
        raise ConfigError(
            f"the conditioning has a vector (cond.vector, width {vector.shape[-1]}) but denoiser.vector_dim is "
            "null: set denoiser.vector_dim to its width (${conditioner.vector_dim})"
        )
    if vector is not None and vector.shape[-1] != vector_dim:
        raise ConfigError(f"cond.vector has width {vector.shape[-1]} but denoiser.vector_dim={vector_dim}")


def check_input_channels(x: torch.Tensor, x_t: torch.Tensor, concat: torch.Tensor | None, in_channels: int) -> None:
    """``x = cat(x_t, concat)`` (B, C, H, W) must have the ``in_channels`` the denoiser was built for."""
    if x.shape[1] != in_channels:
        c_c = 0 if concat is None else concat.shape[1]
        raise ConfigError(
            f"denoiser.in_channels={in_channels} but the input has {x.shape[1]} channels "
            f"({x_t.shape[1]} latent + {c_c} concatenated by the conditioner): set denoiser.in_channels to "
            f"{x.shape[1]} (the default config uses ${{add:${{autoencoder.latent_channels}},"
            f"${{conditioner.concat_channels}}}})"
        )
