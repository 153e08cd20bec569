"""Concat conditioners (super-resolution, inpainting, semantic maps) and their masks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch.utils.data import default_collate

from latentgen.conditioning.inpainting import InpaintingConditioner
from latentgen.conditioning.semantic import EmbeddedSemanticMapConditioner, SemanticMapConditioner
from latentgen.conditioning.superres import EncodedLowResConditioner, LowResConditioner
from latentgen.conditioning.masks import box_mask, centre_box_masks, random_masks, stroke_mask
from latentgen.data.shapes import ShapesDataset
from latentgen.errors import ConfigError, DataError
from latentgen.randomness import BatchRandomness
from tests.helpers import compose_config


@pytest.fixture(scope="module")
def batch():
    ds = ShapesDataset(split="val", resolution=32, num_val=8)
    return default_collate([ds[i] for i in range(8)])


@pytest.fixture(scope="module")
def autoencoder():
    cfg = compose_config(["data=shapes", "autoencoder=kl_f4_tiny"])
    torch.manual_seed(0)
    return instantiate(cfg.autoencoder).eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------- masks
def test_masks_are_binary_non_empty_and_deterministic_under_a_generator():
    a = random_masks(6, (32, 32), torch.Generator().manual_seed(3))
    b = random_masks(6, (32, 32), torch.Generator().manual_seed(3))
    c = random_masks(6, (32, 32), torch.Generator().manual_seed(4))
    assert a.shape == (6, 1, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert (a.flatten(1).sum(1) > 0).all() and (a.flatten(1).mean(1) < 1).all()
    # a prefix of a batch gets the same masks whatever the batch size
    assert torch.equal(random_masks(2, (32, 32), torch.Generator().manual_seed(3)), a[:2])
    box = box_mask((32, 32), torch.Generator().manual_seed(0))
    rows, cols = box[0].any(1), box[0].any(0)
    assert box[0].sum() == rows.sum() * cols.sum()  # a rectangle
    assert stroke_mask((32, 32), torch.Generator().manual_seed(0)).sum() > 0
    assert centre_box_masks(2, (8, 8))[0, 0].sum() == 16
    with pytest.raises(ConfigError, match="mask_kinds"):
        random_masks(1, (8, 8), None, kinds=["blob"])


# ---------------------------------------------------------------------------------------------- super-resolution
def test_superres_makes_the_low_res_input_itself(batch, autoencoder):
    cond = LowResConditioner(factor=4, downsample_factor=4, image_channels=3, concat_channels=3).eval()
    out = cond(batch)
    assert out.concat.shape == (8, 3, 8, 8) and out.context is None
    low = F.interpolate(batch["image"], size=(8, 8), mode="bicubic", antialias=True, align_corners=False)
    assert torch.allclose(out.concat, low.clamp(-1, 1), atol=1e-6)  # factor = f: the latent size itself
    # a given low-res input wins over the image
    given = cond({"low_res": torch.zeros(2, 3, 8, 8)})
    assert torch.equal(given.concat, torch.zeros(2, 3, 8, 8))
    assert cond.visualize(batch).shape == (8, 3, 32, 32)
    enc = EncodedLowResConditioner(latent_channels=3, concat_channels=3)
    enc.set_first_stage(autoencoder)
    assert enc(batch).concat.shape == (8, 3, 8, 8)
    up = F.interpolate(low.clamp(-1, 1), size=(32, 32), mode="bicubic", align_corners=False).clamp(-1, 1)
    assert torch.allclose(enc(batch).concat, autoencoder.encode_scaled(up), atol=1e-5)  # the encoded upsampled input
    with pytest.raises(ConfigError, match="concat_channels"):
        LowResConditioner(image_channels=3, concat_channels=4)


# ---------------------------------------------------------------------------------------------- inpainting
def make_inpaint(autoencoder, **kw) -> InpaintingConditioner:
    cond = InpaintingConditioner(latent_channels=3, downsample_factor=4, concat_channels=4, **kw)
    cond.set_first_stage(autoencoder)
    return cond


def test_inpainting_concat_is_masked_latent_plus_downsampled_mask(batch, autoencoder):
    cond = make_inpaint(autoencoder).eval()
    out = cond(batch)
    assert out.concat.shape == (8, 4, 8, 8)
    mask = cond.mask_for(batch)
    assert mask.shape == (8, 1, 32, 32)
    assert torch.allclose(out.concat[:, 3:], F.avg_pool2d(mask, 4), atol=1e-6)
    expected = autoencoder.encode_scaled(batch["image"] * (1 - mask))
    assert torch.allclose(out.concat[:, :3], expected, atol=1e-5)


def test_inpainting_ignores_the_pixels_under_the_mask(batch, autoencoder):
    cond = make_inpaint(autoencoder).eval()
    mask = cond.mask_for(batch)
    noisy = dict(batch, image=torch.where(mask.bool(), torch.rand_like(batch["image"]) * 2 - 1, batch["image"]))
    assert torch.allclose(cond(noisy).concat, cond(batch).concat, atol=1e-6)


def test_inpainting_training_masks_are_per_sample_of_the_global_batch(batch, autoencoder):
    """Two ranks of 4 draw the masks one process of 8 draws for the same samples (the DDP contract), and
    drawing them leaves the step's main stream untouched."""
    cond = make_inpaint(autoencoder).train()
    whole_rng = BatchRandomness.for_step(5, 3, 8)
    whole = cond.mask_for(batch, whole_rng)  # (8, 1, H, W)
    shards = [{k: v[4 * r : 4 * r + 4] for k, v in batch.items()} for r in (0, 1)]  # rank r: rows 4r .. 4r+3
    halves = [cond.mask_for(shards[r], BatchRandomness.for_step(5, 3, 4, rank=r, world_size=2)) for r in (0, 1)]
    assert torch.equal(whole, torch.cat(halves))
    assert torch.equal(whole_rng.rand(), BatchRandomness.for_step(5, 3, 8).rand())


def test_inpainting_masks_are_fixed_in_eval_random_in_training_and_given_masks_win(batch, autoencoder):
    cond = make_inpaint(autoencoder)
    cond.eval()
    assert torch.equal(cond.mask_for(batch), cond.mask_for(batch))
    cond.train()
    m1 = cond.mask_for(batch, BatchRandomness.for_step(1, 0, 8))
    assert torch.equal(m1, cond.mask_for(batch, BatchRandomness.for_step(1, 0, 8)))
    assert not torch.equal(m1, cond.mask_for(batch, BatchRandomness.for_step(2, 0, 8)))
    given = torch.zeros(8, 32, 32)
    given[:, :16] = 1
    assert torch.equal(cond.mask_for(dict(batch, inpaint_mask=given))[:, 0], given)
    cond.eval()
    vis = cond.visualize(batch)
    assert vis.shape == (8, 3, 32, 32) and vis.min() >= -1 and vis.max() <= 1
    pasted = cond.paste_known(torch.zeros_like(batch["image"]), batch)
    keep = 1 - cond.mask_for(batch)
    assert torch.equal(pasted * keep, batch["image"] * keep)


def test_inpainting_needs_the_first_stage_and_checks_its_contract(batch, autoencoder):
    cond = InpaintingConditioner(latent_channels=3, downsample_factor=4, concat_channels=4)
    with pytest.raises(ConfigError, match="set_first_stage"):
        cond(batch)
    with pytest.raises(ConfigError, match="latent_channels"):
        InpaintingConditioner(latent_channels=4, downsample_factor=4, concat_channels=5).set_first_stage(autoencoder)
    with pytest.raises(ConfigError, match=r"add:\$\{autoencoder.latent_channels\},1"):
        InpaintingConditioner(latent_channels=3, concat_channels=3)
    with pytest.raises(DataError, match="cache_latents"):
        make_inpaint(autoencoder)({"latent": torch.zeros(2, 3, 8, 8)})


def test_the_ema_copy_shares_the_first_stage_and_state_dict_holds_it_once(autoencoder):
    cfg = compose_config(["experiment=shapes_inpaint", "denoiser=unet_tiny"])
    first_stage = instantiate(cfg.autoencoder)
    system = instantiate(cfg.model, first_stage=first_stage)
    shadow = system.ema.shadow["conditioner"]
    assert shadow is not system.conditioner
    assert shadow._first_stage.module is system.first_stage is system.conditioner._first_stage.module
    keys = list(system.state_dict())
    n_fs = len(first_stage.state_dict())
    assert sum(k.startswith("first_stage.") for k in keys) == n_fs
    assert not [k for k in keys if ("conditioner" in k and ("encoder" in k or "decoder" in k))]
    # parameters are counted once: first stage + denoiser + its EMA copy
    n_params = sum(p.numel() for p in system.parameters())
    n_den = sum(p.numel() for p in system.denoiser.parameters())
    assert n_params == sum(p.numel() for p in first_stage.parameters()) + 2 * n_den


# ---------------------------------------------------------------------------------------------- semantic
def test_semantic_map_one_hot_fractions_and_embedding(batch):
    cond = SemanticMapConditioner(num_classes=7, downsample_factor=4, concat_channels=7).eval()
    out = cond(batch)
    assert out.concat.shape == (8, 7, 8, 8)
    assert torch.allclose(out.concat.sum(1), torch.ones(8, 8, 8))  # class fractions per latent pixel
    assert torch.allclose(out.concat[:, 0], (batch["mask"] == 0).float().reshape(8, 8, 4, 8, 4).mean((2, 4)))
    emb = EmbeddedSemanticMapConditioner(num_classes=7, embed_dim=5, concat_channels=5)
    assert emb(batch).concat.shape == (8, 5, 8, 8)
    with pytest.raises(ConfigError, match="concat_channels"):
        EmbeddedSemanticMapConditioner(num_classes=7, embed_dim=5, concat_channels=7)
    assert cond.visualize(batch).shape == (8, 3, 32, 32)
    with pytest.raises(DataError, match="out of range"):
        SemanticMapConditioner(num_classes=3, concat_channels=3)(batch)
    with pytest.raises(DataError, match="batch\\['mask'\\]"):
        cond({"image": batch["image"]})


@pytest.mark.parametrize("name", ["superres", "inpaint", "semantic"])
def test_concat_dropout_zeroes_exactly_the_dropped_samples(name, batch, autoencoder):
    cfg = compose_config(["data=shapes", f"conditioner={name}", "conditioner.drop_prob=0.5"])
    cond = instantiate(cfg.conditioner)
    if hasattr(cond, "set_first_stage"):
        cond.set_first_stage(autoencoder)
    cond.eval()
    full = cond(batch)
    null = cond.null(batch)
    assert torch.equal(null.concat, torch.zeros_like(full.concat))
    cond.train()
    batch_eval_masks = dict(batch, inpaint_mask=cond.mask_for(batch, training=False)) if name == "inpaint" else batch
    out = cond(batch_eval_masks, BatchRandomness.for_step(0, 0, 8))
    drop = BatchRandomness.for_step(0, 0, 8).rand() < 0.5
    assert 0 < int(drop.sum()) < 8
    assert torch.equal(out.concat[drop], torch.zeros_like(out.concat[drop]))
    assert torch.allclose(out.concat[~drop], full.concat[~drop], atol=1e-6)


def test_a_stored_config_with_the_old_mode_key_builds_its_class_or_says_which_class():
    """Configs stored by runs before the modes became classes still name ``mode``."""
    assert LowResConditioner(mode="resize", concat_channels=3).concat_channels == 3
    with pytest.raises(ConfigError, match="EncodedLowResConditioner"):
        LowResConditioner(mode="encode", concat_channels=3)
    with pytest.raises(ConfigError, match="EmbeddedSemanticMapConditioner"):
        SemanticMapConditioner(num_classes=7, mode="embed", concat_channels=7)
