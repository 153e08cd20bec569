"""Text-to-image alignment on the procedural shapes: an attribute classifier and a prompt parser.

A small CNN with one head per attribute of the first shape (kind, colour, size, position, pattern)
is trained on ``data=shapes`` images; a generated image is *aligned* with its prompt when the
classifier reads back the attributes the prompt names. The alignment score is the fraction of named
attributes read back correctly, overall and per attribute.

Train it (about a minute on one CPU core; writes ``<out>.safetensors`` + ``<out>.json``)::

    python -m latentgen.metrics.attribute_classifier --out .cache/latentgen/classifiers/shapes_attributes_32px

Use it::

    clf = load_attribute_classifier(".cache/latentgen/classifiers/shapes_attributes_32px.safetensors")
    scores = attribute_alignment(clf, images, prompts)   # {"alignment": 0.83, "alignment/colour": ..., ...}

The position head needs where things are, so the trunk keeps a 4x4 map (flattened) instead of a
global average pool.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latentgen.conditioning.tokenizers import split_words
from latentgen.data.shapes import ATTRIBUTES, PATTERNS, POSITIONS
from latentgen.errors import CheckpointError, DataError
from latentgen.metrics.classifier_training import fit_classifier
from latentgen.weights import read_meta_beside, resolve_weights_file, save_weights_with_meta

FORMAT = "latentgen-attribute-classifier-v1"
#: The attributes the alignment score checks by default (pattern only counts when a prompt names it).
ALIGNMENT_ATTRIBUTES = ("colour", "kind", "size", "position", "pattern")


class AttributeClassifierNet(nn.Module):
    """conv(s1) -> 3 x conv(s2) -> flatten (4x4 map at 32 px) -> MLP -> one linear head per attribute.

    Input (B, C, R, R) in [-1, 1] (resized to ``resolution`` if needed); output {attribute: (B, K) logits}.
    """

    def __init__(
        self, heads: dict[str, int], in_channels: int = 3, resolution: int = 32, width: int = 32, hidden: int = 256
    ) -> None:
        super().__init__()
        if resolution % 8:
            raise DataError(f"attribute classifier: resolution {resolution} must be a multiple of 8")

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.SiLU())

        self.heads_spec = dict(heads)
        self.in_channels, self.resolution = in_channels, resolution
        self.trunk = nn.Sequential(
            block(in_channels, width, 1),  # R
            block(width, width, 2),  # R/2
            block(width, 2 * width, 2),  # R/4
            block(2 * width, 4 * width, 2),  # R/8
        )
        side = resolution // 8
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(4 * width * side * side, hidden), nn.SiLU(), nn.Dropout(0.1))
        self.heads = nn.ModuleDict({k: nn.Linear(hidden, n) for k, n in heads.items()})

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if x.shape[1] != self.in_channels:
            x = x.mean(1, keepdim=True).expand(-1, self.in_channels, -1, -1)  # grey <-> RGB
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            size = (self.resolution, self.resolution)
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        return x

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.mlp(self.trunk(self.preprocess(images)))  # (B, 4w, R/8, R/8) -> (B, hidden)
        return {k: head(h) for k, head in self.heads.items()}  # {attr: (B, K)}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """{attribute: (B,) predicted class index} for [-1, 1] images."""
        was = self.training
        self.eval()
        outs: dict[str, list[torch.Tensor]] = {k: [] for k in self.heads}
        for chunk in images.split(batch_size):
            for k, logits in self(chunk.to(next(self.parameters()).device)).items():
                outs[k].append(logits.argmax(1).cpu())
        self.train(was)
        return {k: torch.cat(v) for k, v in outs.items()}


# ---------------------------------------------------------------------------------------------- prompts
def parse_caption(text: str) -> dict[str, int]:
    """Attribute indices (into ``ATTRIBUTES[name]``) that a shapes-style prompt names, for its first shape.

    'a large striped blue square at the bottom right' -> {size: 2, pattern: 1, colour: 2, kind: 1, position: 8}.
    Unnamed attributes are absent ('a blue square' names colour and kind only; no pattern word, no pattern).
    """
    clause = text.lower().split(" and ")[0]
    words = split_words(clause)
    out: dict[str, int] = {}
    for attr in ("size", "pattern", "colour", "kind"):
        names = ATTRIBUTES[attr]
        hit = next((names.index(w) for w in words if w in names), None)
        if hit is not None:
            out[attr] = hit
    # position: the longest position phrase that occurs as consecutive words ("top left" before "left")
    joined = " " + " ".join(words) + " "
    for pos in sorted(POSITIONS, key=len, reverse=True):
        if f" {pos} " in joined:
            out["position"] = POSITIONS.index(pos)
            break
    return out


def caption_from_attributes(kind: int, colour: int, size: int, position: int, pattern: int = 0) -> str:
    """The dataset's caption for one shape (inverse of :func:`parse_caption` for a single shape)."""
    words = [ATTRIBUTES["size"][size]]
    if PATTERNS[pattern] != "plain":
        words.append(PATTERNS[pattern])
    words += [ATTRIBUTES["colour"][colour], ATTRIBUTES["kind"][kind]]
    return f"a {' '.join(words)} at the {POSITIONS[position]}"


@torch.no_grad()
def attribute_alignment(
    classifier: AttributeClassifierNet,
    images: torch.Tensor,
    prompts: Sequence[str],
    attributes: Sequence[str] = ALIGNMENT_ATTRIBUTES,
) -> dict[str, float]:
    """How well images follow their prompts, read back by the attribute classifier.

    Returns ``alignment`` (correct / named over all (image, attribute) pairs), ``alignment/<attr>``
    (per attribute, over the prompts that name it), ``all_correct`` (images whose every named
    attribute is right) and ``n`` (images).
    """
    if len(prompts) != images.shape[0]:
        raise DataError(f"attribute_alignment: {images.shape[0]} images but {len(prompts)} prompts")
    preds = classifier.predict(images)
    correct = {a: 0 for a in attributes}
    named = {a: 0 for a in attributes}
    all_ok = 0
    for i, prompt in enumerate(prompts):
        target = parse_caption(prompt)
        ok = True
        for a in attributes:
            if a in target and a in preds:
                named[a] += 1
                hit = int(preds[a][i]) == target[a]
                correct[a] += hit
                ok &= hit
        all_ok += ok
    out = {f"alignment/{a}": correct[a] / named[a] for a in attributes if named[a]}
    total = sum(named.values())
    out["alignment"] = sum(correct.values()) / total if total else float("nan")
    out["all_correct"] = all_ok / max(1, len(prompts))
    out["n"] = float(len(prompts))
    return out


# ---------------------------------------------------------------------------------------------- training
def _shapes_tensors(ds: Any, attributes: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])  # (N, C, R, R) in [-1, 1]
    attrs = [ds.attributes(i) for i in range(len(ds))]
    labels = {a: torch.tensor([d[a] for d in attrs], dtype=torch.long) for a in attributes}  # {attr: (N,)}
    return images, labels


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mild blur and noise, so that decoded (slightly soft) samples are read like real images."""
    b = x.shape[0]
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)  # (B, C, H, W)
    w = torch.rand(b, 1, 1, 1, generator=g) * 0.6  # per-sample blur amount in [0, 0.6]
    x = (1 - w) * x + w * blur
    return (x + 0.03 * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def accuracy(net: AttributeClassifierNet, images: torch.Tensor, labels: dict[str, torch.Tensor]) -> dict[str, float]:
    preds = net.predict(images)
    return {a: float((preds[a] == labels[a]).float().mean()) for a in labels}


def train_attribute_classifier(
    train_ds: Any,
    val_ds: Any,
    *,
    epochs: int = 12,
    batch_size: int = 64,
    lr: float = 3e-3,
    width: int = 32,
    hidden: int = 256,
    seed: int = 0,
    attributes: Sequence[str] = tuple(ATTRIBUTES),
) -> tuple[AttributeClassifierNet, dict[str, Any]]:
    """Train on a shapes train split; return the network and its metadata (val accuracy per head)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = _shapes_tensors(train_ds, attributes)
    x_val, y_val = _shapes_tensors(val_ds, attributes)
    heads = {a: len(ATTRIBUTES[a]) for a in attributes}
    net = AttributeClassifierNet(heads, in_channels=x.shape[1], resolution=x.shape[-1], width=width, hidden=hidden)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        logits = net(_augment(x[idx], g))  # {attr: (B, K)}
        return sum(F.cross_entropy(logits[a], y[a][idx]) for a in attributes)

    fit = fit_classifier(net, len(x), batch_loss, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=1e-4,
                         generator=g, drop_last=True)  # fmt: skip
    meta = {
        "format": FORMAT, "heads": heads, "class_names": {a: list(ATTRIBUTES[a]) for a in attributes},
        "in_channels": int(x.shape[1]), "resolution": int(x.shape[-1]), "width": width, "hidden": hidden,
        "epochs": epochs, "seed": seed, "num_train": len(x), "num_val": len(x_val), "train_seconds": fit.seconds,
        "val_accuracy": accuracy(net, x_val, y_val), "train_accuracy": accuracy(net, x, y),
        "epoch_losses": fit.epoch_losses,
    }  # fmt: skip
    return net, meta


def save_attribute_classifier(
    net: AttributeClassifierNet, meta: dict[str, Any], path: str | os.PathLike
) -> tuple[Path, Path]:
    """Write ``<path>.safetensors`` (weights) and ``<path>.json`` (``meta``: architecture, accuracy)."""
    return save_weights_with_meta(net, meta, path)


def load_attribute_classifier(path: str | os.PathLike | None = None) -> AttributeClassifierNet:
    """Load a classifier written by :func:`save_attribute_classifier` (``--out`` of this module's CLI)."""
    from safetensors.torch import load_file

    given = None if path in (None, "") else Path(os.path.expanduser(str(path)))
    weights = resolve_weights_file(
        given,
        what="shapes attribute classifier (text-to-image alignment)",
        filename=given.name if given is not None else "shapes_attributes_32px.safetensors",
        config_key="attribute_classifier",
        env_var="LATENTGEN_ATTRIBUTE_CLASSIFIER",
        search_torch_hub=False,
    )
    meta = read_meta_beside(
        weights, FORMAT, "attribute classifier", "python -m latentgen.metrics.attribute_classifier --out ..."
    )
    net = AttributeClassifierNet(
        {k: int(v) for k, v in meta["heads"].items()}, int(meta["in_channels"]), int(meta["resolution"]),
        int(meta["width"]), int(meta["hidden"]),
    )  # fmt: skip
    try:
        net.load_state_dict(load_file(str(weights)))
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise CheckpointError(
            f"attribute classifier '{weights}' does not match its json ({type(e).__name__}: {e})"
        ) from e
    net.meta = meta  # type: ignore[attr-defined]
    return net.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m latentgen.metrics.attribute_classifier",
        description="Train the shapes attribute classifier used for text-to-image alignment.",
    )
    parser.add_argument("--out", required=True, help="output path (<out>.safetensors and <out>.json are written)")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--data-seed", type=int, default=0, help="data.dataset.seed of the shapes images")
    parser.add_argument("--num-train", type=int, default=5000)
    parser.add_argument("--num-val", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from latentgen.data.shapes import ShapesDataset

    kw = dict(resolution=args.resolution, channels=args.channels, seed=args.data_seed, num_train=args.num_train,
              num_val=args.num_val, max_shapes=1)  # fmt: skip
    net, meta = train_attribute_classifier(
        ShapesDataset(split="train", **kw), ShapesDataset(split="val", **kw),
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
    )  # fmt: skip
    weights, json_path = save_attribute_classifier(net, meta, args.out)
    print(json.dumps({"val_accuracy": meta["val_accuracy"], "train_seconds": round(meta["train_seconds"], 1)}))
    print(f"wrote {weights} and {json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
