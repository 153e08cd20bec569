"""Samples for text prompts (``evaluate.py prompt=...``) and, on shapes models, how well they follow them."""

from __future__ import annotations

import time
from typing import Any

import torch

from latentgen.metrics.generator_evaluation import sampler_nfe


@torch.no_grad()
def prompt_samples(
    system, prompts: list[str], *, num_samples: int, batch_size: int, seed: int, attribute_classifier: str | None = None
) -> tuple[dict[str, Any], torch.Tensor]:
    """``num_samples`` images per prompt, prompt-major: (P * num_samples, C, H, W) in [-1, 1].

    With ``attribute_classifier=<path>`` (shapes models) the fraction of each prompt's attributes the samples
    show is measured (``attribute_alignment``, experiments/shapes_conditioning).
    """
    from latentgen.conditioning.prompts import batch_from_prompts, check_prompt_supported

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
