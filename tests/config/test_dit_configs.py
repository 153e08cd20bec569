"""The DiT / SiT configs: denoiser=dit_*, experiment=dit_digits|sit_digits|dit_imagenet256, and the f-sweep."""

from __future__ import annotations

import pytest
import torch

from latentgen.config import instantiate
from latentgen.conditioning import Conditioning
from latentgen.networks import DiT
from tests.helpers import compose_config, resolved


@pytest.mark.parametrize("size, hidden, depth", [("s", 384, 12), ("b", 768, 12), ("l", 1024, 24), ("xl", 1152, 28)])
@pytest.mark.parametrize("p", [2, 4, 8])
def test_published_sizes_compose_with_any_patch_size(size, hidden, depth, p):
    cfg = compose_config(
        [f"denoiser=dit_{size}", f"denoiser.patch_size={p}", "data=folder", "data.root=/x", "data.resolution=256"]
        + ["autoencoder=kl_f8", "objective=ddpm_eps_learned_var_linear"]
    )
    d = resolved(cfg)["denoiser"]
    assert (d["hidden_size"], d["depth"], d["patch_size"]) == (hidden, depth, p)
    assert (d["in_channels"], d["out_channels"], d["input_size"]) == (4, 8, 32)


@pytest.mark.parametrize(
    "experiment, objective, schedule, sampler",
    [
        ("dit_digits", "EpsPrediction", "LinearSchedule", "DDPMSampler"),
        ("sit_digits", "VelocityPrediction", "RectifiedFlowPath", "HeunSampler"),
    ],
)
def test_digits_experiments_build_a_class_conditional_dit(experiment, objective, schedule, sampler):
    cfg = compose_config([f"experiment={experiment}"])
    plain = resolved(cfg)
    assert plain["objective"]["prediction"]["_target_"].endswith(objective)
    assert plain["schedule"]["_target_"].endswith(schedule)
    assert plain["sampler"]["_target_"].endswith(sampler)
    net, conditioner = instantiate(cfg.denoiser), instantiate(cfg.conditioner)
    assert isinstance(net, DiT) and net.vector_dim == net.hidden_size == conditioner.vector_dim
    cond = conditioner.encode({"label": torch.tensor([3, 7])}, drop_mask=torch.tensor([False, True]))
    out = net(torch.randn(2, net.in_channels, net.input_size, net.input_size), torch.rand(2), cond)
    assert out.shape == (2, net.out_channels, net.input_size, net.input_size)


def test_sit_is_dit_with_a_flow_objective_from_the_command_line():
    plain = resolved(compose_config(["experiment=dit_digits", "objective=rectified_flow", "sampler=dopri5"]))
    assert plain["schedule"]["_target_"].endswith("RectifiedFlowPath")  # the objective brings its path
    assert plain["objective"]["time_sampler"]["_target_"].endswith("LogitNormalTime")
    assert plain["denoiser"]["out_channels"] == 3


def test_imagenet_experiment_has_the_papers_settings():
    plain = resolved(compose_config(["experiment=dit_imagenet256", "data.root=/data/imagenet"]))
    d = plain["denoiser"]
    assert (d["hidden_size"], d["depth"], d["num_heads"], d["patch_size"]) == (1152, 28, 16, 2)
    assert (d["in_channels"], d["out_channels"], d["input_size"], d["vector_dim"]) == (4, 8, 32, 1152)
    assert plain["conditioner"]["num_classes"] == 1000 and plain["data"]["batch_size"] == 256
    assert plain["model"]["optimizer"]["lr"] == 1e-4 and plain["model"]["ema_decay"] == 0.9999
    assert plain["schedule"]["_target_"].endswith("LinearSchedule") and plain["objective"]["learn_variance"]
    assert plain["sampler"]["steps"] == 250 and plain["guidance"]["scale"] == 1.5


def test_f_sweep_runs_with_a_dit_and_its_f_by_p_pairs_have_equal_tokens_and_size(tmp_path):
    cfg = compose_config(["experiment=f_sweep", "denoiser=dit_tiny"], output_dir=str(tmp_path))
    assert isinstance(instantiate(cfg.denoiser), DiT)
    unet = instantiate(compose_config(["experiment=f_sweep", "ldm=f4"], output_dir=str(tmp_path)).denoiser)
    unet_params = sum(p.numel() for p in unet.parameters())
    for option, f, p in [("dit_f2p4", 2, 4), ("dit_f4p2", 4, 2), ("dit_f8p1", 8, 1)]:
        cfg = compose_config(["experiment=f_sweep", f"ldm={option}"], output_dir=str(tmp_path))
        net = instantiate(cfg.denoiser)
        assert cfg.autoencoder.downsample_factor == f and net.patch_size == p
        assert net.grid**2 == 16  # (32 / (f p))^2 tokens
        n = sum(q.numel() for q in net.parameters())
        assert abs(n / unet_params - 1) < 0.15, (option, n, unet_params)
        net(torch.randn(1, net.in_channels, net.input_size, net.input_size), torch.rand(1), Conditioning())


def test_a_dit_that_does_not_fit_the_latents_is_named_by_the_contract_check():
    from latentgen.systems.denoiser_fit import denoiser_mismatches

    cfg = compose_config(["experiment=dit_digits", "denoiser=dit_tiny", "denoiser.input_size=16"])
    net = instantiate(cfg.denoiser)
    problems = denoiser_mismatches(denoiser=net, latent_channels=3, latent_size=8, learn_variance=True, vector_dim=64)
    assert len(problems) == 1 and "input_size=16" in problems[0]


@pytest.mark.parametrize("conditioner", ["text", "superres", "class"])
def test_dit_takes_every_kind_of_conditioning_from_the_configs(conditioner):
    """Text tokens through cross-attention, concatenated channels through in_channels, class tokens as context."""
    cfg = compose_config(["data=shapes", "denoiser=dit_tiny", f"conditioner={conditioner}"])
    net, cond_model = instantiate(cfg.denoiser), instantiate(cfg.conditioner)
    res = cfg.data.resolution
    batch = {"caption": ["a red circle", "a blue square"], "image": torch.rand(2, 3, res, res) * 2 - 1}
    batch["label"] = torch.tensor([0, 1])
    cond = cond_model.encode(batch, drop_mask=None)
    x = torch.randn(2, cfg.autoencoder.latent_channels, net.input_size, net.input_size)
    with torch.no_grad():
        for p in net.parameters():  # past the zero initialisation, so the condition reaches the output
            p.normal_(0, 0.05)
    t = torch.rand(2)
    out = net(x, t, cond)
    assert out.shape == (2, net.out_channels, net.input_size, net.input_size)
    other = cond_model.encode({**batch, "caption": batch["caption"][::-1], "image": batch["image"].flip(0),
                               "label": batch["label"].flip(0)}, drop_mask=None)  # fmt: skip
    assert not torch.allclose(net(x, t, other), out)
