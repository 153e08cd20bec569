"""Samples for text prompts (``evaluate.py ckpt=... prompt="a large blue square at the bottom right"``) and,
on shapes models, how well they follow them.

    check_prompt_supported(system.conditioner)            # ConfigError for a model without text conditioning
    batch = batch_from_prompts(prompt, num_samples=16)     # {"caption": [prompt] * 16}
    images = system.sample(batch, generator=g, guidance_scale=4.0)   # (16, C, H, W) in [-1, 1]

:func:`prompt_samples` does this for ``evaluate.py`` and measures the alignment.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from latentgen.errors import ConfigError
from latentgen.metrics.generator_evaluation import sampler_nfe

__all__ = ["batch_from_prompts", "check_prompt_supported", "prompt_samples"]


def batch_from_prompts(prompts: str | Sequence[str], num_samples: int = 1) -> dict[str, Any]:
    """A sampling batch from prompts: ``{"caption": list[str]}`` with each prompt repeated ``num_samples``
    times, prompt-major (``[p0, p0, ..., p1, p1, ...]``). An empty prompt ``""`` means unconditional.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = [str(p) for p in prompts]
    if not prompts:
        raise ConfigError('prompt: give at least one prompt (prompt="a small red circle at the center")')
    if int(num_samples) < 1:
        raise ConfigError(f"num_samples={num_samples} must be >= 1")
    return {"caption": [p for p in prompts for _ in range(int(num_samples))]}


def check_prompt_supported(conditioner: Any) -> None:
    """Raise a ConfigError unless ``conditioner`` is text-conditioned and needs nothing besides captions."""
    name = type(conditioner).__name__
    if not getattr(conditioner, "accepts_prompts", False):
        raise ConfigError(
            f"prompt=... needs a text-conditioned model, but this checkpoint's conditioner is {name} "
            f"(it reads {list(getattr(conditioner, 'input_keys', ('label',) if 'Class' in name else ()))} "
            "from a batch, not captions). Train one with conditioner=text (e.g. python train.py "
            "experiment=shapes_text2img), "
            "or leave prompt= out."
        )
    others = [k for k in getattr(conditioner, "input_keys", ("caption",)) if k != "caption"]
    if others:
        raise ConfigError(
            f"prompt=... alone cannot condition this model: its conditioner ({name}) also needs {others} from the "
            "batch (e.g. a low-res or masked image); evaluate it on the dataset instead of prompts."
        )


@torch.no_grad()
def prompt_samples(
    system, prompts: list[str], *, num_samples: int, batch_size: int, seed: int, attribute_classifier: str | None = None
) -> tuple[dict[str, Any], torch.Tensor]:
    """``num_samples`` images per prompt, prompt-major: (P * num_samples, C, H, W) in [-1, 1].

    With ``attribute_classifier=<path>`` (shapes models) the fraction of each prompt's attributes the samples
    show is measured (``attribute_alignment``, experiments/shapes_conditioning).
    """
    check_prompt_supported(system.conditioner)
    captions = batch_from_prompts(prompts, num_samples)["caption"]
    gen = torch.Generator().manual_seed(seed)
    start = time.time()
    chunks = [
        system.sample({"caption": captions[i : i + batch_size]}, generator=gen).cpu()
        for i in range(0, len(captions), batch_size)
    ]
    images = torch.cat(chunks)  # (P * num_samples, C, H, W)
    results: dict[str, Any] = {
        "sampling_images_per_s": images.shape[0] / max(time.time() - start, 1e-9),
        "num_samples": float(images.shape[0]),
        "nfe": sampler_nfe(system, None),
    }
    if attribute_classifier:
        from latentgen.metrics.attribute_classifier import attribute_alignment, load_attribute_classifier

        results.update(attribute_alignment(load_attribute_classifier(attribute_classifier), images, captions))
    return results, images
