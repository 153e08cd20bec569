"""Prompts at evaluation: batches from prompts, and a clear error for models without text conditioning."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from latentgen.metrics.prompt_evaluation import batch_from_prompts, check_prompt_supported
from latentgen.errors import ConfigError
from tests.helpers import compose_config


def test_batch_from_prompts_repeats_each_prompt():
    assert batch_from_prompts("a red circle", num_samples=3) == {"caption": ["a red circle"] * 3}
    assert batch_from_prompts(["a", "b"], num_samples=2)["caption"] == ["a", "a", "b", "b"]
    with pytest.raises(ConfigError):
        batch_from_prompts([])
    with pytest.raises(ConfigError, match="num_samples"):
        batch_from_prompts("x", num_samples=0)


@pytest.mark.parametrize("name", ["text", "text_char"])
def test_text_models_accept_prompts(name):
    check_prompt_supported(instantiate(compose_config(["data=shapes", f"conditioner={name}"]).conditioner))


@pytest.mark.parametrize("name,data", [("none", "shapes"), ("class", "digits"), ("superres", "shapes"),
                                       ("inpaint", "shapes"), ("semantic", "shapes")])  # fmt: skip
def test_a_prompt_on_a_model_without_text_conditioning_is_a_config_error(name, data):
    cond = instantiate(compose_config([f"data={data}", f"conditioner={name}"]).conditioner)
    with pytest.raises(ConfigError, match=r"prompt=\.\.\. needs a text-conditioned model.*conditioner=text"):
        check_prompt_supported(cond)


def test_a_prompt_alone_cannot_condition_text_plus_image_models():
    cond = instantiate(compose_config(["data=shapes", "conditioner=text_superres"]).conditioner)
    with pytest.raises(ConfigError, match="also needs \\['image'\\]"):
        check_prompt_supported(cond)


def test_a_text_system_samples_from_prompts_with_guidance():
    cfg = compose_config(["experiment=shapes_text2img", "denoiser=unet_tiny", "sampler.steps=2"])
    system = instantiate(cfg.model, first_stage=instantiate(cfg.autoencoder)).eval()
    check_prompt_supported(system.conditioner)
    batch = batch_from_prompts("a large blue square at the bottom right", num_samples=3)
    images = system.sample(batch, generator=torch.Generator().manual_seed(0), guidance_scale=4.0)
    assert images.shape == (3, 3, 32, 32) and torch.isfinite(images).all()
