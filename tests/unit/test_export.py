"""`latentgen.export` in process: a latent system (random weights, no training) exported and sampled with the
diffusers pipeline gives latentgen's samples; refusals name the option; the run's safetensors files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from latentgen.app.building import build_latent_system
from latentgen.errors import ConfigError
from latentgen.export import export_to_diffusers, parse_args
from latentgen.generative.samplers import DDIMSampler
from latentgen.systems.weights_export import export_latent_model_weights
from tests.helpers import compose_config, make_first_stage_export

diffusers = pytest.importorskip("diffusers")

KL_16_GROUPS = ["autoencoder=kl_f4_tiny", "+autoencoder.encoder.norm_groups=16", "+autoencoder.decoder.norm_groups=16"]


def tiny_system(tmp_path, *overrides: str):
    args = [*KL_16_GROUPS, "data=shapes", "data.resolution=16", "denoiser=unet_plain", *overrides]
    ckpt = make_first_stage_export(tmp_path / "fs", args)
    system = build_latent_system(compose_config(args, output_dir=str(tmp_path)), str(ckpt)).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the zero-initialized output layers would make every sample the same
        for p in system.ema.shadow.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return system


def test_exported_system_samples_as_latentgen(tmp_path):
    system = tiny_system(tmp_path, "objective=ddpm_v")
    out = export_to_diffusers(system, tmp_path / "exported", scheduler="ddim")
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "LatentgenPipeline"
    pipe = diffusers.DiffusionPipeline.from_pretrained(out, custom_pipeline=str(out / "pipeline.py"),
                                                       trust_remote_code=True)  # fmt: skip
    batch = {"label": torch.zeros(2)}
    ours = system.sample(batch, generator=torch.Generator().manual_seed(3), sampler=DDIMSampler(steps=10))
    theirs = pipe(batch_size=2, num_inference_steps=10, generator=torch.Generator().manual_seed(3), output_type="pt")
    torch.testing.assert_close(theirs.images, (ours + 1) / 2, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "overrides,option",
    [
        (["objective=ddpm_eps_learned_var"], "learn_variance"),
        (["denoiser=unet_tiny"], "context_dim"),  # transformer attention without cross-attention
        (["conditioner=superres", "data.resolution=16"], "concatenates"),
    ],
)
def test_export_refuses_unmappable_options_by_name(tmp_path, overrides, option):
    system = tiny_system(tmp_path, *overrides)
    with pytest.raises(ConfigError, match=option):
        export_to_diffusers(system, tmp_path / "exported", vae=False)
    assert not (tmp_path / "exported" / "unet").exists()


def test_arguments_are_checked():
    assert parse_args(["ckpt=a.ckpt", "out=b", "ema=false"]) == {
        "ckpt": "a.ckpt", "out": "b", "ema": False, "scheduler": None, "vae_only": False}  # fmt: skip
    with pytest.raises(ConfigError, match="out"):
        parse_args(["ckpt=a.ckpt"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_args(["ckpt=a.ckpt", "out=b", "steps=3"])


def test_latent_model_weights_are_written_as_safetensors_with_config(tmp_path):
    system = tiny_system(tmp_path)
    model_cfg = {"denoiser": {"_target_": "latentgen.networks.UNet"}, "optimizer": {}}
    paths = export_latent_model_weights(system.trainable, system.ema.shadow, model_cfg, tmp_path / "ck")
    live, ema = load_file(paths[0]), load_file(paths[1])
    assert live.keys() == system.trainable.state_dict().keys() == ema.keys()
    torch.testing.assert_close(ema["denoiser.conv_out.weight"], system.ema.shadow.denoiser.conv_out.weight)
    meta = json.loads(paths[2].read_text())
    assert meta["format"] == "latentgen-latent-model" and list(meta["model"]) == ["denoiser"]


def test_exported_class_model_samples_as_latentgen_with_guidance(tmp_path):
    """conditioner=class_vector: labels are diffusers' class_labels, the null class (guidance) is the last one."""
    system = tiny_system(tmp_path, "data=digits", "conditioner=class_vector", "conditioner.embed_dim=32")
    out = export_to_diffusers(system, tmp_path / "exported", scheduler="ddim")
    pipe = diffusers.DiffusionPipeline.from_pretrained(out, custom_pipeline=str(out / "pipeline.py"),
                                                       trust_remote_code=True)  # fmt: skip
    assert pipe.unet.config.num_class_embeds == system.conditioner.num_classes + 1
    labels = torch.tensor([0, 3, 9])
    ours = system.sample({"label": labels}, generator=torch.Generator().manual_seed(3), sampler=DDIMSampler(steps=10),
                         guidance_scale=2.0, return_latents=True)  # fmt: skip
    theirs = pipe(class_labels=labels, num_inference_steps=10, generator=torch.Generator().manual_seed(3),
                  guidance_scale=2.0, output_type="latent").images  # fmt: skip
    torch.testing.assert_close(theirs, ours, atol=1e-4 * max(1.0, float(ours.abs().max())), rtol=0)
