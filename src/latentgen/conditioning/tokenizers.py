"""Deterministic tokenizers for the trainable text encoder (no downloaded vocabulary).

- :class:`WordTokenizer`: lower-cased words and punctuation marks; the vocabulary is a list in config
  (its order defines the ids) or is built from a dataset's captions with :func:`vocabulary_from_dataset`
  (sorted, so the same captions always give the same ids).
- :class:`CharTokenizer`: printable ASCII characters; needs no vocabulary at all.

Both return fixed-length ``(ids, mask)`` pairs: ``<bos>`` first, then the tokens, then ``<pad>`` up
to ``max_length``. The fixed length matters: classifier-free guidance batches the conditional and the
null (empty-prompt) tokens in one forward, so both must have the same number of tokens. The empty
prompt ``""`` is just ``<bos>``: its encoding is the null condition.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from latentgen.errors import ConfigError

PAD, UNK, BOS = "<pad>", "<unk>", "<bos>"
SPECIALS = (PAD, UNK, BOS)
PAD_ID, UNK_ID, BOS_ID = 0, 1, 2

_WORD_RE = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    """'A large, blue square!' -> ['a', 'large', ',', 'blue', 'square', '!']."""
    return _WORD_RE.findall(text.lower())


class Tokenizer:
    """Base: ``__call__(texts, max_length) -> (ids (B, L) int64, mask (B, L) bool)``, mask True = real token."""

    vocab_size: int

    def token_ids(self, text: str) -> list[int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if max_length < 1:
            raise ConfigError(f"tokenizer max_length={max_length} must be >= 1 (the <bos> token)")
        ids = torch.full((len(texts), max_length), PAD_ID, dtype=torch.long)  # (B, L)
        mask = torch.zeros((len(texts), max_length), dtype=torch.bool)  # (B, L)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ConfigError(f"captions must be strings, got {type(text).__name__} at position {i}")
            toks = [BOS_ID, *self.token_ids(text)]
            if len(toks) > max_length:
                warnings.warn(
                    f"caption of {len(toks)} tokens truncated to conditioner.max_length={max_length}: {text[:60]!r}...",
                    UserWarning,
                    stacklevel=3,
                )
                toks = toks[:max_length]
            ids[i, : len(toks)] = torch.tensor(toks, dtype=torch.long)
            mask[i, : len(toks)] = True
        return ids, mask


class WordTokenizer(Tokenizer):
    """Word-level tokenizer over a fixed vocabulary; unknown words map to ``<unk>``.

    Args:
        vocab: the words (ids 3.. in this order, after ``<pad>``, ``<unk>``, ``<bos>``). Lower case;
            duplicates are an error (they would make the ids depend on which copy wins).
    """

    def __init__(self, vocab: Sequence[str]) -> None:
        words = [str(w).lower() for w in vocab]
        if not words:
            raise ConfigError(
                "WordTokenizer: conditioner.tokenizer.vocab is empty; list the words or build it from captions"
            )
        dup = sorted({w for w in words if words.count(w) > 1})
        if dup:
            raise ConfigError(f"WordTokenizer: conditioner.tokenizer.vocab has duplicates {dup}")
        bad = [w for w in words if w in SPECIALS or split_words(w) != [w]]
        if bad:
            raise ConfigError(f"WordTokenizer: vocab entries {bad} are not single words (or are reserved tokens)")
        self.words = words
        self.index = {w: i + len(SPECIALS) for i, w in enumerate(words)}
        self.vocab_size = len(SPECIALS) + len(words)

    def token_ids(self, text: str) -> list[int]:
        return [self.index.get(w, UNK_ID) for w in split_words(text)]


class CharTokenizer(Tokenizer):
    """Character-level tokenizer over printable ASCII (32..126), lower-cased by default."""

    def __init__(self, lowercase: bool = True) -> None:
        self.lowercase = lowercase
        self.vocab_size = len(SPECIALS) + 95

    def token_ids(self, text: str) -> list[int]:
        if self.lowercase:
            text = text.lower()
        return [(ord(c) - 32 + len(SPECIALS)) if 32 <= ord(c) <= 126 else UNK_ID for c in text]


def vocabulary_from_captions(captions: Iterable[str], min_count: int = 1) -> list[str]:
    """Sorted words that occur at least ``min_count`` times (deterministic for the same captions)."""
    counts: dict[str, int] = {}
    for c in captions:
        for w in split_words(c):
            counts[w] = counts.get(w, 0) + 1
    return sorted(w for w, n in counts.items() if n >= min_count)


def vocabulary_from_dataset(
    dataset: Callable[..., Any] | Any, split: str = "train", max_samples: int | None = None, min_count: int = 1
) -> list[str]:
    """The vocabulary of a dataset's captions. ``dataset`` is a dataset or a factory (``data.dataset``).

    Usable from config: ``vocab: {_target_: latentgen.conditioning.tokenizers.vocabulary_from_dataset,
    dataset: ${data.dataset}, max_samples: 5000}``. Datasets with ``attributes(i)["caption"]`` (shapes)
    are read without rendering images.
    """
    ds = dataset(split=split) if callable(dataset) and not hasattr(dataset, "__getitem__") else dataset
    n = len(ds) if max_samples is None else min(len(ds), int(max_samples))
    if hasattr(ds, "attributes"):
        captions = (ds.attributes(i)["caption"] for i in range(n))
    else:
        captions = (ds[i]["caption"] for i in range(n))
    return vocabulary_from_captions(captions, min_count=min_count)
