"""AutoencoderSystem: it owns the discriminator (state_dict keys, legacy keys, optimizers) and refuses a loss
made for the other regularizer."""

from __future__ import annotations

import pytest
import torch

from latentgen.autoencoders.autoencoder import Autoencoder
from latentgen.autoencoders.discriminator import PatchGANDiscriminator
from latentgen.autoencoders.encoder_decoder import Decoder, Encoder
from latentgen.autoencoders.losses import AutoencoderLoss
from latentgen.autoencoders.perceptual import NoPerceptual
from latentgen.autoencoders.regularizers import KLRegularizer, VectorQuantizer
from latentgen.errors import ConfigError
from latentgen.systems.autoencoder import AutoencoderSystem


def _autoencoder(kind: str) -> Autoencoder:
    z = 2
    moments = 2 * z if kind == "kl" else z
    net = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, resolution=8)
    enc = Encoder(in_channels=1, out_channels=moments, **net)
    dec = Decoder(out_channels=1, in_channels=z, **net)
    reg = KLRegularizer() if kind == "kl" else VectorQuantizer(16, z)
    return Autoencoder(enc, reg, dec, downsample_factor=2, latent_channels=z)


def _system(kind: str = "kl", learn_logvar: bool | None = None, disc: bool = True) -> AutoencoderSystem:
    learn = (kind == "kl") if learn_logvar is None else learn_logvar
    loss = AutoencoderLoss(NoPerceptual(), perceptual_weight=0.0, learn_logvar=learn)
    d = PatchGANDiscriminator(1, ndf=4, n_layers=1, norm="batch") if disc else None
    return AutoencoderSystem(_autoencoder(kind), loss, d)


def test_the_system_owns_the_discriminator_and_the_loss_does_not():
    system = _system()
    keys = list(system.state_dict())
    assert any(k.startswith("discriminator.main.") for k in keys)
    assert not any(k.startswith("loss.discriminator") for k in keys)
    assert not any(isinstance(m, PatchGANDiscriminator) for m in system.loss.modules())
    # The second optimizer steps exactly the discriminator; the first the autoencoder and the loss's logvar.
    ae_opt, d_opt = system.configure_optimizers()
    assert [id(p) for p in d_opt.param_groups[0]["params"]] == [id(p) for p in system.discriminator.parameters()]
    ae_ids = {id(p) for p in ae_opt.param_groups[0]["params"]}
    assert id(system.loss.logvar) in ae_ids and not ae_ids & {id(p) for p in system.discriminator.parameters()}
    assert _system(disc=False).configure_optimizers().__len__() == 1


def test_a_checkpoint_with_the_old_loss_discriminator_keys_still_loads():
    torch.manual_seed(0)
    old = _system()
    legacy = {("loss." + k if k.startswith("discriminator.") else k): v.clone() for k, v in old.state_dict().items()}
    assert any(k.startswith("loss.discriminator.") for k in legacy)
    torch.manual_seed(1)
    new = _system()
    new.load_state_dict(legacy)  # strict: every key is matched after the rename
    for k, v in old.state_dict().items():
        assert torch.equal(new.state_dict()[k], v), k


def test_a_vq_autoencoder_refuses_the_kl_loss_and_the_other_way_round():
    with pytest.raises(ConfigError, match="ae_loss=vq"):
        _system("vq", learn_logvar=True)
    with pytest.raises(ConfigError, match="ae_loss=default"):
        _system("kl", learn_logvar=False)
    _system("vq", learn_logvar=False), _system("kl", learn_logvar=True)  # the matching pairs build


def test_rescale_latents_is_a_property_of_the_regularizer():
    assert KLRegularizer().rescale_latents is True
    assert VectorQuantizer(8, 2).rescale_latents is False
    assert VectorQuantizer(8, 2, rescale_latents=True).rescale_latents is True


class _Batches:
    """The part of a datamodule that stage 2 reads: a train loader of image batches."""

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        return [{"image": 3 * torch.randn(4, 1, 8, 8, generator=g)} for _ in range(2)]


@pytest.mark.parametrize("rescale", [False, True])
def test_vq_latents_keep_scale_one_unless_asked_and_the_log_says_so(rescale, caplog):
    from latentgen.app.training import measure_latent_statistics

    system = _system("vq")
    system.autoencoder.regularizer._rescale_latents = rescale
    with caplog.at_level("INFO", logger="latentgen"):
        measure_latent_statistics(system, _Batches())
    scale = float(system.autoencoder.latent_scale)
    if rescale:
        assert scale != 1.0 and "applied" in caplog.text
    else:
        assert scale == 1.0
        assert "latent scale stays 1" in caplog.text and "rescale_latents=true" in caplog.text


@pytest.mark.parametrize("option", ["kl_f4_tiny", "vq_f4_tiny"])
def test_an_autoencoder_checkpoint_of_the_former_layout_still_loads(option, tmp_path):
    """Before the system owned the discriminator, checkpoints stored it under model.loss.discriminator
    (config) and loss.discriminator.* (weights), with model.rescale_vq_latents; a VQ model could carry the
    KL loss."""
    from latentgen.app.building import load_system_from_checkpoint
    from latentgen.checkpoint import CONFIG_KEY, KIND_KEY, VERSION_KEY
    from latentgen.config import instantiate, to_container
    from tests.helpers import FAST, compose_config

    overrides = [*FAST, "model=autoencoder", f"autoencoder={option}", "discriminator=patchgan_tiny", "perceptual=none"]
    if option.startswith("vq"):
        overrides.append("ae_loss=default")  # the former default: the KL loss beside a VQ model
    cfg = compose_config(overrides, output_dir=str(tmp_path))
    stored = to_container(cfg)
    stored["model"]["loss"]["discriminator"] = stored["model"].pop("discriminator")
    stored["model"]["rescale_vq_latents"] = False
    torch.manual_seed(0)
    cfg.ae_loss.learn_logvar = not option.startswith("vq")  # today's pairing, to make the weights
    reference = instantiate(cfg.model)
    weights = {("loss." + k if k.startswith("discriminator.") else k): v for k, v in reference.state_dict().items()}
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": weights, CONFIG_KEY: stored, KIND_KEY: "autoencoder", VERSION_KEY: "0.1"}, path)

    system, _ = load_system_from_checkpoint(path)
    assert isinstance(system.discriminator, PatchGANDiscriminator)
    for k, v in reference.state_dict().items():
        assert torch.equal(system.state_dict()[k], v), k


def test_a_vq_first_stage_of_the_former_config_still_matches_the_request():
    """A VQ export written before rescale_latents existed and with the absolute restart threshold of 1.0
    matches today's vq_* request: restart settings act in training only, and rescale_latents was false."""
    from latentgen.autoencoders.frozen import config_differences
    from latentgen.config import to_container
    from tests.helpers import compose_config

    requested = to_container(compose_config(["autoencoder=vq_f4_tiny"]).autoencoder)
    former = to_container(compose_config(["autoencoder=vq_f4_tiny"]).autoencoder)
    del former["regularizer"]["rescale_latents"]
    former["regularizer"]["dead_code_threshold"] = 1.0
    assert config_differences(requested, former) == []
    requested["regularizer"]["rescale_latents"] = True  # a request the former checkpoint cannot meet
    assert config_differences(requested, former) == [
        "autoencoder.regularizer.rescale_latents: requested True, missing in the checkpoint"
    ]
