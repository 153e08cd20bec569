"""MultiConditioner: merging the fields of several conditioners, shared or per-part dropout."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from latentgen.conditioning.base import Conditioner, Conditioning
from latentgen.conditioning.superres import LowResConditioner
from latentgen.conditioning.multi import MultiConditioner, merge_conditionings
from latentgen.conditioning.text import TransformerTextConditioner
from latentgen.conditioning.tokenizers import WordTokenizer
from latentgen.errors import ConfigError
from latentgen.randomness import BatchRandomness
from tests.helpers import compose_config

CAPTIONS = ["a red circle", "a blue square", "a white star", "a cyan ring"] * 2


def parts(text_drop: float = 0.0, low_drop: float = 0.0) -> dict[str, Conditioner]:
    words = ["a", "red", "blue", "white", "cyan", "circle", "square", "star", "ring"]
    text = TransformerTextConditioner(
        WordTokenizer(words), width=16, depth=1, heads=2, max_length=6, drop_prob=text_drop, context_dim=16
    )
    low = LowResConditioner(factor=4, downsample_factor=4, image_channels=3, concat_channels=3, drop_prob=low_drop)
    return {"text": text, "low_res": low}


def batch() -> dict:
    return {"caption": CAPTIONS, "image": torch.rand(8, 3, 32, 32) * 2 - 1}


def test_merge_concatenates_tokens_channels_and_vectors():
    a = Conditioning(context=torch.randn(2, 3, 4), context_mask=torch.tensor([[1, 1, 0], [1, 0, 0]]).bool(),
                     vector=torch.randn(2, 5), concat=torch.randn(2, 1, 8, 8))  # fmt: skip
    b = Conditioning(context=torch.randn(2, 2, 4), vector=torch.randn(2, 5), concat=torch.randn(2, 2, 8, 8))
    m = merge_conditionings([a, b])
    assert m.context.shape == (2, 5, 4) and m.concat.shape == (2, 3, 8, 8) and m.vector.shape == (2, 10)
    assert m.context_mask.tolist() == [[True, True, False, True, True], [True, False, False, True, True]]
    assert torch.allclose(merge_conditionings([a, b], "sum").vector, a.vector + b.vector)


def test_multi_conditioner_merges_text_and_low_res():
    multi = MultiConditioner(parts(), drop_prob=0.1, concat_channels=3, context_dim=16).eval()
    out = multi(batch())
    assert out.context.shape == (8, 6, 16) and out.context_mask.shape == (8, 6) and out.concat.shape == (8, 3, 8, 8)
    assert multi.accepts_prompts and set(multi.input_keys) == {"caption", "image"}
    assert multi.visualize(batch()).shape == (8, 3, 32, 32)
    null = multi.null(batch())
    assert torch.equal(null.concat, torch.zeros(8, 3, 8, 8))
    assert Conditioning.cat(null, out).context.shape == (16, 6, 16)


def test_shared_dropout_drops_every_part_of_a_sample_together():
    multi = MultiConditioner(parts(), drop_prob=0.5, concat_channels=3, context_dim=16)
    b = batch()
    multi.eval()
    full, null = multi(b), multi.null(b)
    multi.train()
    out = multi(b, BatchRandomness.for_step(0, 0, 8))
    drop = BatchRandomness.for_step(0, 0, 8).rand() < 0.5
    assert 0 < int(drop.sum()) < 8
    for field in ("context", "concat"):
        got, n, f = getattr(out, field), getattr(null, field), getattr(full, field)
        assert torch.allclose(got[drop], n[drop], atol=1e-6) and torch.allclose(got[~drop], f[~drop], atol=1e-6)


def test_per_part_dropout_uses_each_parts_probability():
    multi = MultiConditioner(parts(text_drop=1.0, low_drop=0.0), drop_prob=None, concat_channels=3, context_dim=16)
    b = batch()
    multi.eval()
    full, null = multi(b), multi.null(b)
    multi.train()
    out = multi(b, BatchRandomness.for_step(0, 0, 8))
    assert torch.allclose(out.context, null.context, atol=1e-6)  # text always dropped
    assert torch.allclose(out.concat, full.concat)  # low-res never


def test_declared_dimensions_are_checked():
    with pytest.raises(ConfigError, match="concat_channels"):
        MultiConditioner(parts(), concat_channels=4, context_dim=16)
    p = parts()
    p["text2"] = TransformerTextConditioner(WordTokenizer(["a"]), width=8, depth=1, heads=2, context_dim=8)
    with pytest.raises(ConfigError, match="different widths"):
        MultiConditioner(p, concat_channels=3, context_dim=16)


def test_text_superres_config_composes_and_runs_through_the_unet():
    cfg = compose_config(["data=shapes", "conditioner=text_superres", "denoiser=unet_tiny"])
    assert cfg.denoiser.in_channels == cfg.autoencoder.latent_channels + 3
    cond, net = instantiate(cfg.conditioner).eval(), instantiate(cfg.denoiser)
    out = net(torch.randn(8, 3, 8, 8), torch.rand(8), cond(batch()))
    assert out.shape == (8, 3, 8, 8)


def test_per_part_dropout_trains_the_null_condition_through_training_step():
    """``drop_prob: null`` (each part drops with its own probability): the system's training step, not only
    ``forward``, hands the parts their drop masks, so the null condition is trained."""
    from latentgen.app.building import build_latent_system

    cfg = compose_config(
        [
            "autoencoder=identity",
            "data=digits",
            "data.resolution=8",
            "denoiser=unet_tiny",
            "conditioner=class",
            "conditioner.drop_prob=0.5",
        ]
    )
    system = build_latent_system(cfg, None)
    label_part = system.conditioner
    system.conditioner = MultiConditioner({"label": label_part}, drop_prob=None, context_dim=cfg.conditioner.embed_dim)
    seen: list[torch.Tensor | None] = []
    encode = label_part.encode

    def spy(batch, drop_mask):
        seen.append(drop_mask)
        return encode(batch, drop_mask)

    label_part.encode = spy
    batch = {"latent_raw": torch.randn(64, 1, 8, 8), "label": torch.arange(64) % 10}
    system.train()
    assert system.training_step(batch, 0) is not None
    assert len(seen) == 1 and seen[0] is not None, "no drop mask reached the part: the null class is never trained"
    assert 10 < int(seen[0].sum()) < 54  # about half of 64 with drop_prob 0.5


def test_a_conditioner_in_eval_mode_leaves_the_global_rng_alone():
    """Sampling calls ``conditioner(batch)`` in eval mode: it must not consume torch's global RNG (the
    training step's dropout layers draw from it)."""
    multi = MultiConditioner(parts(text_drop=0.5, low_drop=0.5), drop_prob=None, concat_channels=3, context_dim=16)
    b = batch()
    multi.eval()
    torch.manual_seed(0)
    multi(b)
    after = torch.rand(4)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(4))
