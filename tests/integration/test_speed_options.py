"""Speed options as config, each trained for a few steps on the CPU: bf16-mixed, channels-last,
gradient checkpointing, gradient accumulation (one EMA update per optimizer step), torch.compile."""

from __future__ import annotations

import pytest
import torch

from latentgen.checkpoint import read_latentgen_checkpoint
from latentgen.app.building import load_system_from_checkpoint
from latentgen.app.training import train
from tests.helpers import FAST, compose_config, make_first_stage_export

BASE = [
    *FAST,
    "data=shapes",
    "data.dataset.num_train=36",
    "data.dataset.num_val=8",
    "data.batch_size=8",
    "data.resolution=16",
    "trainer.limit_val_batches=1",
    "trainer.val_check_interval=3",
    "num_grid_samples=4",
    "sample_every_n_steps=1000",
    "sampler.steps=2",
    "autoencoder=kl_f4_tiny",
    "denoiser=unet_tiny",
    "trainer.max_steps=3",
]


@pytest.fixture(scope="module")
def latent(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("speed")
    export = make_first_stage_export(tmp / "fs", ["data=shapes", "data.resolution=16", "autoencoder=kl_f4_tiny"])

    def run(name: str, *overrides: str) -> dict:
        out = tmp / name
        cfg = compose_config(
            [*BASE, "model.lr_schedule.warmup_steps=1", f"first_stage.ckpt={export}", *overrides], output_dir=str(out)
        )
        metrics = train(cfg)
        return {"metrics": metrics, "ckpt": read_latentgen_checkpoint(out / "checkpoints" / "last.ckpt"), "dir": out}

    return run


def _finite_fp32(state: dict) -> None:
    for k, v in state.items():
        if v.is_floating_point():
            assert v.dtype == torch.float32 and torch.isfinite(v).all(), k


def test_bf16_mixed_trains_the_latent_model_with_fp32_weights(latent):
    out = latent("bf16", "trainer.precision=bf16-mixed")
    assert out["metrics"]["global_step"] == 3 and out["metrics"]["val/loss"] > 0
    _finite_fp32(out["ckpt"]["state_dict"])


def test_bf16_mixed_trains_a_vq_autoencoder(tmp_path):
    cfg = compose_config(
        [
            *BASE,
            "model=autoencoder",
            "autoencoder=vq_f4_tiny",
            "discriminator=patchgan_tiny",
            "perceptual=none",
            "ae_loss.disc_start=1",
            "ae_loss.disc_train_start=0",
            "trainer.precision=bf16-mixed",
        ],
        output_dir=str(tmp_path),
    )
    metrics = train(cfg)
    assert metrics["global_step"] == 3 and metrics["val/psnr"] > 0
    _finite_fp32(read_latentgen_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["state_dict"])


def test_vq_lookup_is_fp32_under_bf16_autocast():
    """Under bf16 autocast the encoder output is bf16; the nearest-code search must still be fp32."""
    from latentgen.autoencoders.regularizers import VectorQuantizer

    vq = VectorQuantizer(num_codes=2, code_dim=4)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0625, 0.0, 0.0]]))
    # Points on both sides of the two codes' midpoint y = 2^-5, 2^-12 apart (exact in bf16).
    y = 2.0**-5 + torch.tensor([k for k in range(-16, 17) if k]) * 2.0**-12  # (32,)
    z = torch.zeros(32, 4)
    z[:, 0], z[:, 1] = 1.0, y
    h = z.reshape(1, 32, 1, 4).permute(0, 3, 1, 2)  # (1, 4, 32, 1)
    want = (y > 2.0**-5).long().reshape(1, 32, 1)
    _, fp32 = vq.quantize(h)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, mixed = vq.quantize(h.bfloat16())
    zb, cb = z.bfloat16(), vq.codebook.detach().bfloat16()
    d_bf16 = zb.pow(2).sum(1, keepdim=True) + cb.pow(2).sum(1) - 2 * zb @ cb.T  # the same formula in bf16
    assert torch.equal(fp32, want) and torch.equal(mixed, want)
    assert not torch.equal(d_bf16.argmin(1).reshape(want.shape), want), "the test cannot tell bf16 from fp32"


def test_channels_last_trains(latent):
    out = latent("cl", "denoiser.channels_last=true")
    assert out["metrics"]["global_step"] == 3
    _finite_fp32(out["ckpt"]["state_dict"])


def test_gradient_checkpointing_gives_the_same_weights(latent):
    plain = latent("plain")["ckpt"]["state_dict"]
    ckpt = latent("gc", "denoiser.gradient_checkpointing=true")["ckpt"]["state_dict"]
    for k, v in plain.items():
        torch.testing.assert_close(ckpt[k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_gradient_accumulation_updates_the_ema_once_per_optimizer_step(latent):
    # 4 batches per epoch, 3 per step: steps end at batches 3, 4 (the epoch's last), 7.
    out = latent("accum", "trainer.accumulate_grad_batches=3")
    state = out["ckpt"]["state_dict"]
    assert out["metrics"]["global_step"] == 3
    assert int(state["ema.num_updates"]) == 3


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a cold inductor compile of forward + backward: minutes on a CPU
def test_compiled_denoiser_trains_and_keeps_its_checkpoint_keys(latent):
    short = ["trainer.max_steps=2"]  # no validation inside training (val_check_interval=3)
    plain = latent("plain_keys", *short)["ckpt"]["state_dict"]
    out = latent("compiled", "compile=true", *short)
    assert out["ckpt"]["state_dict"].keys() == plain.keys()  # no "_orig_mod." prefixes
    for k, v in plain.items():
        torch.testing.assert_close(out["ckpt"]["state_dict"][k], v, rtol=1e-4, atol=1e-5, msg=k)
    system, _ = load_system_from_checkpoint(str(out["dir"] / "checkpoints" / "last.ckpt"))
    assert getattr(system.ema.shadow["denoiser"], "_compiled_call_impl", None) is None  # the EMA copy is plain
