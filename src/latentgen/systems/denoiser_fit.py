"""Does the denoiser fit the first stage? Checked when a latent system is built, not at its first forward.

The latent contract: the denoiser of a latent model reads ``(B, C_in, h, w)`` and writes ``(B, C_out, h, w)``
with

    C_in  = latent_channels + conditioner.concat_channels      (concatenated conditions: masks, low-res z, ...)
    C_out = latent_channels * (2 if objective.learn_variance else 1)
    h = w = image_size // downsample_factor

where ``latent_channels`` and ``downsample_factor`` (f) come from the :class:`~latentgen.autoencoders.Autoencoder`
and nowhere else. The configs derive the denoiser's sizes from the autoencoder by interpolation, so a
mismatch means an explicit override (``denoiser.in_channels=...``), a hand-written denoiser config, or a
first stage whose sizes the config did not state (a pretrained one). Without this check the UNet would
find a channel mismatch only at its first forward, after the first stage was trained, and a size
mismatch never (its convolutions accept any size).

A denoiser declares what it accepts through the attributes ``in_channels``, ``out_channels`` and, when it
is built for one latent size, ``input_size``; cross-attention and vector widths through ``context_dim`` and
``vector_dim``. Attributes a denoiser does not have are not checked.
"""

from __future__ import annotations

from typing import Any

from latentgen.errors import ConfigError


def denoiser_mismatches(
    *,
    denoiser: Any,
    latent_channels: int,
    latent_size: int | None,
    concat_channels: int = 0,
    learn_variance: bool = False,
    context_dim: int | None = None,
    vector_dim: int | None = None,
) -> list[str]:
    """Every way the denoiser does not fit, one line each (empty: it fits)."""
    problems = []

    def declared(name: str) -> Any:
        return getattr(denoiser, name, None)

    want_in = int(latent_channels) + int(concat_channels or 0)
    if declared("in_channels") is not None and int(declared("in_channels")) != want_in:
        problems.append(
            f"denoiser.in_channels={declared('in_channels')} but the first stage gives {latent_channels} latent "
            f"channels and the conditioner concatenates {int(concat_channels or 0)}: expected {want_in}"
        )
    want_out = int(latent_channels) * (2 if learn_variance else 1)
    if declared("out_channels") is not None and int(declared("out_channels")) != want_out:
        why = " x2 for the learned variance" if learn_variance else ""
        problems.append(
            f"denoiser.out_channels={declared('out_channels')} but the objective needs {latent_channels} latent "
            f"channels{why}: expected {want_out}"
        )
    if (
        latent_size is not None
        and declared("input_size") is not None
        and int(declared("input_size")) != int(latent_size)
    ):
        problems.append(
            f"denoiser.input_size={declared('input_size')} but the latents are {latent_size}x{latent_size} "
            "(data.resolution // autoencoder downsample factor)"
        )
    for name, want in (("context_dim", context_dim), ("vector_dim", vector_dim)):
        have = declared(name)
        if hasattr(denoiser, name) and (None if have is None else int(have)) != (None if want is None else int(want)):
            problems.append(f"denoiser.{name}={have} but the conditioner gives {want}")
    return problems


def check_denoiser_fits(
    first_stage: Any, denoiser: Any, conditioner: Any, objective: Any, image_size: int | None
) -> None:
    """Raise a :class:`ConfigError` naming every mismatch between the denoiser and the latents it gets."""
    latent_size = None
    if image_size is not None:
        latent_size = int(first_stage.latent_shape(int(image_size))[-1])
    problems = denoiser_mismatches(
        denoiser=denoiser,
        latent_channels=int(first_stage.latent_channels),
        latent_size=latent_size,
        concat_channels=int(getattr(conditioner, "concat_channels", 0) or 0),
        learn_variance=bool(getattr(objective, "learn_variance", False)),
        context_dim=getattr(conditioner, "context_dim", None),
        vector_dim=getattr(conditioner, "vector_dim", None),
    )
    if problems:
        raise ConfigError(
            "the denoiser does not fit the first stage and conditioner of this latent model:\n  - "
            + "\n  - ".join(problems)
            + "\nLeave denoiser.in_channels/out_channels/input_size/context_dim/vector_dim to the presets' "
            "interpolations (conf/denoiser/unet_tiny.yaml), or set them to the values above."
        )
