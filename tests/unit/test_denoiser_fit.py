"""Building a latent system checks that the denoiser fits the first stage, conditioner and objective, and
names every mismatch (the UNet would find a channel mismatch only at its first forward, a size one never)."""

from __future__ import annotations

import pytest

from latentgen.app.building import build_latent_system
from latentgen.errors import ConfigError
from latentgen.systems.denoiser_fit import denoiser_mismatches
from tests.helpers import compose_config

# identity first stage on 8 px digits: latents are 1x8x8 (grey images), nothing to train first
BASE = ["autoencoder=identity", "data=digits", "data.resolution=8", "denoiser=unet_tiny", "logger=none"]


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["conditioner=class"],
        ["objective=ddpm_eps_learned_var"],
        ["conditioner=inpaint"],
    ],
    ids=["unconditional", "class", "learned-variance", "inpainting-concat"],
)
def test_the_presets_fit_by_construction(overrides):
    build_latent_system(compose_config(BASE + overrides), None)


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["denoiser.in_channels=3"], "denoiser.in_channels=3 but the first stage gives 1 latent channels"),
        (["conditioner=inpaint", "denoiser.in_channels=1"], "the conditioner concatenates"),
        (["objective=ddpm_eps_learned_var", "denoiser.out_channels=1"], "x2 for the learned variance"),
        (["denoiser.input_size=16"], "denoiser.input_size=16 but the latents are 8x8"),
        (["conditioner=class", "denoiser.context_dim=null"], "denoiser.context_dim=None but the conditioner gives"),
    ],
    ids=["latent-channels", "concat-channels", "learned-variance", "input-size", "context-dim"],
)
def test_a_denoiser_that_does_not_fit_is_refused_at_build_naming_the_key(overrides, named):
    with pytest.raises(ConfigError) as e:
        build_latent_system(compose_config(BASE + overrides), None)
    assert named in str(e.value)


def test_every_mismatch_is_listed_and_undeclared_attributes_are_not_checked():
    class Declares:
        in_channels, out_channels, input_size = 5, 5, 4

    problems = denoiser_mismatches(denoiser=Declares(), latent_channels=4, latent_size=8, learn_variance=True)
    assert len(problems) == 3 and "expected 4" in problems[0] and "expected 8" in problems[1]
    assert denoiser_mismatches(denoiser=object(), latent_channels=4, latent_size=8) == []
