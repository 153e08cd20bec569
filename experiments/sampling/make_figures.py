"""The figures of README.md's "Sample from a trained model": image-to-image, inpainting and a negative prompt,
made with the sampling command itself (``python -m latentgen.sample``) on a digits model.

    python experiments/sampling/make_figures.py --ckpt outputs/.../checkpoints/last.ckpt [--text]

``--text``: the checkpoint is text-conditioned (``conditioner=text_char`` on digits: captions "a handwritten
digit seven"), which adds the negative-prompt figure and conditions each input on its own caption (otherwise
the images take the conditions of the first training batch, as the command does without prompt or classes).
Inputs are digits of the val split (the model never trained on them). The figures and the commands run are written next to this file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "src"))

from latentgen.data import DigitsDataset  # noqa: E402
from latentgen.images import save_grid  # noqa: E402


def run(args: list[str], log: list[str]) -> None:
    cmd = [sys.executable, "-m", "latentgen.sample", *args, "progress=false"]
    log.append("python -m latentgen.sample " + " ".join(args))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def read(folder: Path, n: int) -> torch.Tensor:
    """The first n PNGs of a folder as (n, 1, H, W) in [-1, 1]."""
    out = []
    for i in range(n):
        a = np.asarray(Image.open(folder / f"{i:06d}.png").convert("L"), dtype=np.float32)
        out.append(torch.from_numpy(a)[None] / 127.5 - 1.0)
    return torch.stack(out)


def save(images: torch.Tensor, name: str, nrow: int) -> None:
    """A grid of (N, 1, 32, 32) images, each enlarged 3x (nearest) so that the README shows the pixels."""
    save_grid(F.interpolate(images, scale_factor=3, mode="nearest"), HERE / name, nrow=nrow)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--work", default="/tmp/latentgen_sampling_figures")
    ap.add_argument("--text", action="store_true")
    ap.add_argument("--steps", type=int, default=50)
    a = ap.parse_args()
    work = Path(a.work)
    (work / "inputs").mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    common = [f"ckpt={a.ckpt}", "sampler=ddim", f"sampler.steps={a.steps}", "batch_size=4"]

    # Four val digits as the input images, and a mask over their right half (white = generate).
    ds = DigitsDataset(resolution=32, channels=1, split="val")
    picks = [0, 3, 7, 12]
    inputs = torch.stack([ds[i]["image"] for i in picks])  # (4, 1, 32, 32)
    for k, x in enumerate(inputs):
        Image.fromarray(((x[0] + 1) * 127.5).round().clamp(0, 255).byte().numpy()).save(work / "inputs" / f"{k}.png")
    if a.text:  # condition each image on its own caption (cycled like the init images)
        common.append("prompt=[" + ",".join(f"'{ds[i]['caption']}'" for i in picks) + "]")
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 16:] = 255
    Image.fromarray(mask).save(work / "mask.png")

    # Image-to-image: one row per input, columns input | strength 0, 0.3, 0.5, 0.7, 0.9.
    strengths = [0.0, 0.3, 0.5, 0.7, 0.9]
    cols = [inputs]
    for s in strengths:
        out = work / f"i2i_{s}"
        run([*common, f"init_image={work / 'inputs'}", f"strength={s}", "num_samples=4", f"out={out}"], log)
        cols.append(read(out, 4))
    save(torch.stack(cols, 1).flatten(0, 1), "img2img_strip.png", nrow=len(cols))

    # Inpainting with the plain model: input | masked input | latent blending | RePaint resample=4.
    masked = inputs.clone()
    masked[..., 16:] = -1.0
    cols = [inputs, masked]
    for r in (1, 4):
        out = work / f"inpaint_r{r}"
        run([*common, f"init_image={work / 'inputs'}", f"mask={work / 'mask.png'}", f"resample={r}",
             "num_samples=4", f"out={out}"], log)  # fmt: skip
        cols.append(read(out, 4))
    save(torch.stack(cols, 1).flatten(0, 1), "inpaint_strip.png", nrow=len(cols))

    if a.text:
        # The same noise: top row plain guidance, bottom row with a negative prompt.
        # Ancestral DDPM: after a short training DDIM drifts off the digits for some seeds (as on shapes).
        prompt, negative = "a handwritten digit three", "a handwritten digit eight"
        ddpm = [f"ckpt={a.ckpt}", "sampler=ddpm", "sampler.steps=100", "batch_size=8"]
        rows = []
        for neg in (None, negative):
            out = work / f"neg_{neg is not None}"
            extra = [] if neg is None else [f"negative_prompt='{neg}'"]
            run([*ddpm, f"prompt='{prompt}'", *extra, "guidance.scale=3", "num_samples=8", f"out={out}"], log)
            rows.append(read(out, 8))
        save(torch.cat(rows), "negative_prompt.png", nrow=8)
    (HERE / "commands.json").write_text(json.dumps(log, indent=1) + "\n")


if __name__ == "__main__":
    main()
