"""Task metrics: the shapes attribute classifier / prompt alignment, inpainting and super-resolution metrics."""

from __future__ import annotations

import itertools

import pytest
import torch

from latentgen.metrics.attribute_classifier import (
    AttributeClassifierNet,
    attribute_alignment,
    caption_from_attributes,
    load_attribute_classifier,
    parse_caption,
    save_attribute_classifier,
    train_attribute_classifier,
)
from experiments.shapes_conditioning.task_metrics import inpainting_metrics, psnr, region_l1, superres_metrics
from latentgen.data.shapes import ATTRIBUTES, ShapesDataset
from latentgen.errors import WeightsNotFoundError


def test_parse_caption_inverts_the_dataset_captions():
    ranges = [range(len(ATTRIBUTES[a])) for a in ("kind", "colour", "size", "position", "pattern")]
    for kind, colour, size, position, pattern in itertools.product(*ranges):
        caption = caption_from_attributes(kind, colour, size, position, pattern)
        parsed = parse_caption(caption)
        expected = {"kind": kind, "colour": colour, "size": size, "position": position}
        if pattern:
            expected["pattern"] = pattern
        assert parsed == expected, caption
    ds = ShapesDataset(split="val", num_val=20)
    for i in range(20):
        a = ds.attributes(i)
        expected = caption_from_attributes(a["kind"], a["colour"], a["size"], a["position"], a["pattern"])
        assert ds[i]["caption"] == expected
    assert parse_caption("A blue square") == {"colour": 2, "kind": 1}
    assert parse_caption("a red ring at the middle left and a small star at the top left")["position"] == 3


class Oracle(AttributeClassifierNet):
    """Predicts fixed attributes (what a perfect classifier would read from matching images)."""

    def __init__(self, preds: dict[str, torch.Tensor]) -> None:
        super().__init__({k: len(ATTRIBUTES[k]) for k in preds})
        self.preds = preds

    def predict(self, images, batch_size=256):
        return self.preds


def test_alignment_counts_named_attributes_per_attribute_and_overall():
    prompts = ["a large red circle at the center", "a small blue square at the top left"]
    preds = {"kind": torch.tensor([0, 1]), "colour": torch.tensor([0, 2]), "size": torch.tensor([2, 0]),
             "position": torch.tensor([4, 0]), "pattern": torch.tensor([0, 0])}  # fmt: skip
    perfect = attribute_alignment(Oracle(preds), torch.zeros(2, 3, 32, 32), prompts)
    assert perfect["alignment"] == 1.0 and perfect["all_correct"] == 1.0 and "alignment/pattern" not in perfect
    preds["colour"] = torch.tensor([1, 2])
    one_wrong = attribute_alignment(Oracle(preds), torch.zeros(2, 3, 32, 32), prompts)
    assert one_wrong["alignment/colour"] == 0.5 and one_wrong["alignment"] == pytest.approx(7 / 8)
    assert one_wrong["all_correct"] == 0.5


def test_attribute_classifier_trains_saves_and_loads(tmp_path):
    train = ShapesDataset(split="train", num_train=256, num_val=64)
    val = ShapesDataset(split="val", num_train=256, num_val=64)
    net, meta = train_attribute_classifier(train, val, epochs=4, batch_size=32, width=8, hidden=32)
    assert set(meta["val_accuracy"]) == set(ATTRIBUTES)
    assert meta["epoch_losses"][-1] < meta["epoch_losses"][0]  # it learns something in 32 steps
    weights, _ = save_attribute_classifier(net, meta, tmp_path / "clf")
    loaded = load_attribute_classifier(weights)
    x = torch.stack([val[i]["image"] for i in range(4)])
    a, b = net.predict(x), loaded.predict(x)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(WeightsNotFoundError, match="attribute_classifier="):
        load_attribute_classifier(tmp_path / "missing.safetensors")


def test_inpainting_and_superres_metrics():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, :8] = 1
    y = torch.where(mask.bool(), -x, x)  # wrong inside the mask only
    m = inpainting_metrics(y, x, mask, lpips=lambda a, b: (a - b).abs().flatten(1).mean(1))
    assert m["unmasked_l1"] == 0 and m["masked_l1"] > 0.1 and m["unmasked_psnr"] == pytest.approx(100)
    assert m["lpips_composite"] > 0 and m["mask_fraction"] == 0.5
    assert region_l1(x, x, mask).eq(0).all()
    s = superres_metrics(x, x)
    assert s["psnr"] == pytest.approx(100) and s["ssim"] == pytest.approx(1.0, abs=1e-4) and "lpips" not in s
    s = superres_metrics(y, x, lambda a, b: (a - b).abs().flatten(1).mean(1))  # (B,) distances -> mean
    assert s["lpips"] == pytest.approx(float((y - x).abs().mean()))
    assert psnr(x.clamp(-1, 0.9), x).mean() < 100
