"""python -m latentgen.sample: numbered PNGs independent of the process count, resumable, image-to-image,
inpainting with a model not trained for it, and torch-fidelity's own FID on the folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import latentgen.app.sampling as sampling
from latentgen.app.building import load_system_from_checkpoint
from latentgen.errors import ConfigError
from latentgen.metrics.extractors.base import to_uint8_images
from tests.helpers import compose_config

CPU = torch.device("cpu")


def _cfg(ckpt, out, *extra):
    return compose_config(
        [f"ckpt={ckpt}", f"out={out}", "num_samples=10", "batch_size=4", "sampler=ddim", "sampler.steps=3",
         "progress=false", *extra],
        config_name="sample",
        output_dir=str(out),
    )  # fmt: skip


def _ckpt(trained_ldm) -> Path:
    return trained_ldm[1] / "checkpoints" / "last.ckpt"


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def _png_tensor(path: Path) -> torch.Tensor:
    from PIL import Image

    import numpy as np

    with Image.open(path) as im:
        array = np.array(im)  # (H, W) or (H, W, C) uint8
    return torch.from_numpy(array.reshape(*array.shape[:2], -1)).permute(2, 0, 1)  # (C, H, W)


def test_images_do_not_depend_on_the_number_of_processes_and_a_run_resumes(trained_ldm, tmp_path, monkeypatch):
    ckpt = _ckpt(trained_ldm)
    one = sampling.sample_shard(_cfg(ckpt, tmp_path / "one"), CPU, rank=0, world=1)
    for rank in (1, 0):  # the in-process sharding of a 2-process torchrun: each rank draws its own batches
        two = sampling.sample_shard(_cfg(ckpt, tmp_path / "two"), CPU, rank=rank, world=2)
    images = _pngs(tmp_path / "one")
    assert list(images) == [f"{i:06d}.png" for i in range(10)]
    assert images == _pngs(tmp_path / "two")
    assert one["images"] == two["images"] and two["world_size"] == 2
    saved = json.loads((tmp_path / "one" / "samples.json").read_text())
    first = saved["images"][0]
    assert first["file"] == "000000.png" and first["seed"] == 0 and first["batch"] == 0 and "class" in first
    assert first["sampler"].endswith("DDIMSampler") and first["steps"] == 3 and "scale" in first["guidance"]
    assert [r["batch"] for r in saved["images"]] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]

    # Resume: only the batch with a missing image is drawn again, and it comes back identical.
    (tmp_path / "one" / "000005.png").unlink()
    drawn = []
    draw = sampling.draw_batch
    monkeypatch.setattr(sampling, "draw_batch", lambda system, planned, *a: drawn.append(planned.index) or draw(
        system, planned, *a))  # fmt: skip
    sampling.sample_shard(_cfg(ckpt, tmp_path / "one"), CPU, rank=0, world=1)
    assert drawn == [1]
    assert _pngs(tmp_path / "one") == images


def test_classes_and_prompts_are_cycled_and_checked(trained_ldm, tmp_path):
    record = sampling.sample_shard(
        _cfg(_ckpt(trained_ldm), tmp_path / "c", "num_samples=5", "classes=[7,2]"), CPU, rank=0, world=1
    )
    assert [r["class"] for r in record["images"]] == [7, 2, 7, 2, 7]
    with pytest.raises(ConfigError, match="text-conditioned"):  # a class-conditional model takes no prompt
        sampling.sample_shard(_cfg(_ckpt(trained_ldm), tmp_path / "p", "prompt=a digit"), CPU, rank=0, world=1)


def _init_image(tmp_path: Path, system) -> tuple[Path, torch.Tensor]:
    """A 16 px image of the data saved as PNG, and the same image as the sampler reads it."""
    g = torch.Generator().manual_seed(5)
    x = torch.rand(1, 1, 16, 16, generator=g) * 2 - 1  # (1, 1, H, W)
    path = tmp_path / "init.png"
    sampling.save_png(to_uint8_images(x)[0, :1], path)
    return path, sampling.load_image(path, 16, 1)[None]  # (1, 1, H, W)


def test_img2img_at_strength_zero_returns_the_encoded_decoded_input(trained_ldm, tmp_path):
    ckpt = _ckpt(trained_ldm)
    system, _ = load_system_from_checkpoint(str(ckpt))
    path, x = _init_image(tmp_path, system)
    sampling.sample_shard(
        _cfg(ckpt, tmp_path / "s0", f"init_image={path}", "strength=0", "num_samples=2"), CPU, rank=0, world=1
    )
    expected = to_uint8_images(system.decode(system.encode(x)))[0, :1]  # (1, H, W)
    for name in ("000000.png", "000001.png"):
        assert torch.equal(_png_tensor(tmp_path / "s0" / name), expected)
    sampling.sample_shard(
        _cfg(ckpt, tmp_path / "s6", f"init_image={path}", "strength=0.7", "num_samples=1"), CPU, rank=0, world=1
    )
    assert not torch.equal(_png_tensor(tmp_path / "s6" / "000000.png"), expected)


def test_inpainting_with_a_plain_model_keeps_the_known_region(trained_ldm, tmp_path):
    from PIL import Image

    ckpt = _ckpt(trained_ldm)
    system, stored = load_system_from_checkpoint(str(ckpt))
    path, x = _init_image(tmp_path, system)
    mask = torch.zeros(16, 16, dtype=torch.uint8)
    mask[:, 8:] = 255  # generate the right half
    Image.fromarray(mask.numpy()).save(tmp_path / "mask.png")
    cfg = _cfg(ckpt, tmp_path / "inp", f"init_image={path}", f"mask={tmp_path / 'mask.png'}", "num_samples=2",
               "resample=2")  # fmt: skip
    record = sampling.sample_shard(cfg, CPU, rank=0, world=1)
    assert record["inpainting"] == "latent blending" and record["images"][0]["mask"].endswith("mask.png")
    # In latent space the known region is the encoded input exactly ...
    options = sampling.sampling_options(cfg, system, stored)
    planned = next(sampling.plan_batches(cfg, system, stored))
    z = sampling.draw_batch(system, planned, options, 0, CPU, return_latents=True)
    z_init = system.encode(x)
    known = (sampling.latent_mask(options.masks[:1], 4) == 0).expand_as(z_init)  # (1, C, h, w)
    torch.testing.assert_close(z[:1][known], z_init[known], atol=1e-5, rtol=1e-5)  # encoded in a batch of 2 vs 1
    # ... so the known pixels are the decoder's reconstruction up to what the generated latents next to them
    # change through the decoder's receptive field; the generated half differs from the input.
    out = _png_tensor(tmp_path / "inp" / "000000.png").float()
    recon = to_uint8_images(system.decode(z_init))[0, :1].float()
    left, right = (slice(None), slice(None), slice(0, 8)), (slice(None), slice(None), slice(8, 16))
    assert (out[left] - recon[left]).abs().mean() < (out[right] - recon[right]).abs().mean()


@pytest.mark.slow
def test_torch_fidelity_command_line_on_the_folder_gives_the_fid_of_evaluate(trained_ldm, tmp_path):
    """The folder written by the sample command against the data's images, measured by torch-fidelity's own
    command line with a local Inception weights file, gives evaluate.py's FID for the same seed, batch size,
    sampler and weights (both quantize to uint8 as a PNG does, and both run torch-fidelity's Inception)."""
    import subprocess
    import sys

    from latentgen.app.evaluation import evaluate
    from latentgen.config import instantiate
    from latentgen.metrics.generator_evaluation import condition_batches
    from tests.helpers import ROOT, cli_env, random_inception_weights

    ckpt = _ckpt(trained_ldm)
    weights = random_inception_weights(tmp_path / "weights" / "inception.pth")
    common = [f"ckpt={ckpt}", "num_samples=24", "batch_size=8", "sampler=euler", "sampler.steps=2"]
    record = evaluate(
        compose_config(
            [*common, "logger=none", "extractor=inception", f"extractor.weights_path={weights}", "metrics=[fid]"],
            config_name="evaluate",
            output_dir=str(tmp_path / "eval"),
        )
    )
    samples = tmp_path / "samples"
    sampling.sample(compose_config([*common, f"out={samples}", "progress=false"], config_name="sample"))
    # The reference images evaluate.py compares with: the first 24 of the training split, in its order.
    _, stored = load_system_from_checkpoint(str(ckpt))
    datamodule = instantiate(stored.data)
    datamodule.setup("fit")
    real = tmp_path / "real"
    real.mkdir()
    i = 0
    for batch in condition_batches(datamodule, "train", 8, 24):
        for image in to_uint8_images(batch["image"]):
            sampling.save_png(image, real / f"{i:06d}.png")
            i += 1
    proc = subprocess.run(
        [sys.executable, "-m", "torch_fidelity.fidelity", "--input1", str(samples), "--input2", str(real), "--fid",
         "--cpu", "--json", "--silent", "--no-cache", "--feature-extractor", "inception-v3-compat",
         "--feature-extractor-weights-path", str(weights)],
        cwd=ROOT, env=cli_env(tmp_path), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    fid = json.loads(proc.stdout)["frechet_inception_distance"]
    assert fid == pytest.approx(record["metrics"]["fid"], abs=1e-3, rel=1e-6)


@pytest.mark.slow
def test_torchrun_python_m_latentgen_sample_writes_the_images_of_one_process(trained_ldm, tmp_path):
    """`torchrun --nproc_per_node=2 -m latentgen.sample ...` (gloo on the CPU) writes the images that one
    process writes, and samples.json once."""
    import subprocess
    import sys

    from tests.helpers import ROOT, cli_env

    args = [f"ckpt={_ckpt(trained_ldm)}", "num_samples=10", "batch_size=4", "sampler=ddim", "sampler.steps=3",
            "progress=false"]  # fmt: skip
    logs = tmp_path / "logs"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", f"--log-dir={logs}",
         "--redirects=3", "-m", "latentgen.sample", *args, f"out={tmp_path / 'two'}"],
        cwd=ROOT, env={**cli_env(tmp_path), "PYTHONPATH": str(ROOT / "src")}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    rank_logs = "".join(f"\n--- {p.relative_to(logs)}\n{p.read_text()[-3000:]}" for p in sorted(logs.rglob("std*.log")))
    assert proc.returncode == 0, rank_logs + "\n--- torchrun\n" + (proc.stdout + proc.stderr)[-2000:]
    assert json.loads((tmp_path / "two" / "samples.json").read_text())["world_size"] == 2
    sampling.sample_shard(_cfg(_ckpt(trained_ldm), tmp_path / "one"), CPU, rank=0, world=1)
    assert _pngs(tmp_path / "two") == _pngs(tmp_path / "one")
    assert not list((tmp_path / "two").glob("*.log")) and not (tmp_path / "two" / ".hydra").exists()


def test_a_negative_prompt_is_the_unconditional_branch_of_guidance(tmp_path):
    """On a text model the null condition is the empty prompt: negative prompt "" samples what plain guidance
    samples, another negative prompt changes the images; and guidance rescale / interval reach the sampler."""
    from latentgen.app.building import build_latent_system
    from tests.helpers import make_first_stage_export

    first_stage = ["data=shapes", "data.resolution=16", "autoencoder=kl_f4_tiny"]
    export = make_first_stage_export(tmp_path / "fs", first_stage)
    cfg = compose_config([*first_stage, "denoiser=unet_tiny", "conditioner=text", "sampler=ddim", "sampler.steps=3"])
    torch.manual_seed(0)
    system = build_latent_system(cfg, str(export)).eval()
    for p in system.ema.shadow.parameters():  # an untrained zero-initialised output layer would ignore the text
        p.data.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    batch = {"caption": ["a large red circle at the center"] * 2}

    def draw(**kw):
        return system.sample(batch, generator=torch.Generator().manual_seed(0), guidance_scale=4.0, **kw)

    plain = draw()
    assert torch.equal(draw(uncond_batch={"caption": ["", ""]}), plain)
    assert not torch.allclose(draw(uncond_batch={"caption": ["red", "red"]}), plain)
    assert not torch.allclose(draw(guidance_rescale=0.7), plain)
    assert torch.equal(draw(guidance_interval=(0.0, 1.0)), plain)
    assert not torch.allclose(draw(guidance_interval=(0.0, 0.5)), plain)


def test_a_model_trained_for_inpainting_takes_the_image_and_mask_as_its_condition(tmp_path, monkeypatch):
    """conditioner=inpaint: the init image and mask go into the batch (the model's own path), no blending."""
    from latentgen.app.building import build_latent_system
    from tests.helpers import make_first_stage_export

    first_stage = ["data=shapes", "data.resolution=16", "autoencoder=kl_f4_tiny"]
    export = make_first_stage_export(tmp_path / "fs", first_stage)
    cfg = compose_config([*first_stage, "denoiser=unet_tiny", "conditioner=inpaint", "sampler=ddim", "sampler.steps=2"])
    system = build_latent_system(cfg, str(export)).eval()
    init = torch.rand(2, 3, 16, 16) * 2 - 1
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., 8:] = 1.0
    options = sampling.SamplingOptions(
        sampler="ddim", steps=2, guidance_scale=1.0, init_images=init, masks=mask, model_inpaints=True
    )
    planned = sampling.PlannedBatch(index=0, first=0, batch={"caption": ["", ""]}, records=[{}, {}])
    seen = {}
    monkeypatch.setattr(system, "sample", lambda batch, **kw: seen.update(batch=batch, kw=kw) or init)
    sampling.draw_batch(system, planned, options, 0, CPU)
    assert torch.equal(seen["batch"]["image"], init) and torch.equal(seen["batch"]["inpaint_mask"], mask)
    assert "init" not in seen["kw"] and "mask" not in seen["kw"]
    assert hasattr(system.conditioner, "paste_known")  # what sampling_options recognises such a model by
