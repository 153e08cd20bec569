"""The figures of README.md's "Sample from a trained model": image-to-image, inpainting and a negative prompt,
made with the sampling command itself (``python -m latentgen.sample``) on the text-to-image shapes model.

    python experiments/sampling/make_figures.py --ckpt outputs/.../checkpoints/last.ckpt            # shapes
    python experiments/sampling/make_figures.py --ckpt <a digits checkpoint> --data digits [--text]

``--data shapes`` (default): a ``experiment=shapes_text2img`` checkpoint; inputs are shapes of the val split
whose shape sits in the centre column (so that the right-half mask cuts through it), each conditioned on its
own caption, plus the negative-prompt figure. ``--data digits``: a digits checkpoint; ``--text`` when it is
text-conditioned (``conditioner=text_char``: captions "a handwritten digit seven"), which adds the
negative-prompt figure and conditions each input on its own caption (otherwise the images take the conditions
of the first training batch, as the command does without prompt or classes).
The models never trained on the val split. The figures and the commands run are written next to this file.
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

from latentgen.data import DigitsDataset, ShapesDataset  # noqa: E402
from latentgen.images import save_grid  # noqa: E402

# Per data: the val images used as inputs, the sampler of the img2img/inpainting strips, and the negative-prompt
# pair (prompt, negative prompt).
SETUPS = {
    "digits": {
        "picks": [0, 3, 7, 12],
        "sampler": ["sampler=ddim", "sampler.steps=50"],
        "negative": ("a handwritten digit three", "a handwritten digit eight"),
    },
    "shapes": {
        # 7: large striped green cross, 16: large blue circle, 18: medium spotted magenta square,
        # 25: large striped cyan circle; all in the centre column.
        "picks": [7, 16, 18, 25],
        "sampler": ["sampler=ddim", "sampler.steps=50"],
        # A colourless prompt (the captions always name a colour): the samples lean red/yellow; naming red in the
        # negative prompt moves them to white/cyan. The clearest of four pairs tried on this model.
        "negative": ("a large circle at the center", "a large red circle at the center"),
    },
}


def run(args: list[str], log: list[str]) -> None:
    cmd = [sys.executable, "-m", "latentgen.sample", *args, "progress=false"]
    log.append("python -m latentgen.sample " + " ".join(args))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def read(folder: Path, n: int, channels: int) -> torch.Tensor:
    """The first n PNGs of a folder as (n, C, H, W) in [-1, 1]."""
    out = []
    for i in range(n):
        img = Image.open(folder / f"{i:06d}.png").convert("L" if channels == 1 else "RGB")
        a = torch.from_numpy(np.asarray(img, dtype=np.float32)) / 127.5 - 1.0  # (H, W) or (H, W, 3)
        out.append(a[None] if channels == 1 else a.permute(2, 0, 1))
    return torch.stack(out)


def to_pil(x: torch.Tensor) -> Image.Image:
    """(C, H, W) in [-1, 1] -> a PIL image."""
    a = ((x + 1) * 127.5).round().clamp(0, 255).byte()
    return Image.fromarray(a[0].numpy()) if a.shape[0] == 1 else Image.fromarray(a.permute(1, 2, 0).numpy())


def save(images: torch.Tensor, name: str, nrow: int) -> None:
    """A grid of (N, C, 32, 32) images, each enlarged 3x (nearest) so that the README shows the pixels."""
    save_grid(F.interpolate(images, scale_factor=3, mode="nearest"), HERE / name, nrow=nrow)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--work", default="/tmp/latentgen_sampling_figures")
    ap.add_argument("--data", choices=sorted(SETUPS), default="shapes")
    ap.add_argument("--text", action="store_true", help="digits: the checkpoint is text-conditioned")
    ap.add_argument("--prompt", default=None, help="negative-prompt figure: the prompt (default: per data)")
    ap.add_argument("--negative", default=None, help="negative-prompt figure: the negative prompt")
    a = ap.parse_args()
    setup = SETUPS[a.data]
    text = a.text or a.data == "shapes"
    work = Path(a.work)
    (work / "inputs").mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    common = [f"ckpt={a.ckpt}", *setup["sampler"], "batch_size=4"]

    # Four val images as the inputs, and a mask over their right half (white = generate).
    if a.data == "shapes":
        ds, channels = ShapesDataset(resolution=32, channels=3, split="val"), 3
    else:
        ds, channels = DigitsDataset(resolution=32, channels=1, split="val"), 1
    picks = setup["picks"]
    inputs = torch.stack([ds[i]["image"] for i in picks])  # (4, C, 32, 32)
    for k, x in enumerate(inputs):
        to_pil(x).save(work / "inputs" / f"{k}.png")
    if text:  # condition each image on its own caption (cycled like the init images)
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
        cols.append(read(out, 4, channels))
    save(torch.stack(cols, 1).flatten(0, 1), "img2img_strip.png", nrow=len(cols))

    # Inpainting with the plain model: input | masked input | latent blending | RePaint resample=4.
    masked = inputs.clone()
    masked[..., 16:] = -1.0
    cols = [inputs, masked]
    for r in (1, 4):
        out = work / f"inpaint_r{r}"
        run([*common, f"init_image={work / 'inputs'}", f"mask={work / 'mask.png'}", f"resample={r}",
             "num_samples=4", f"out={out}"], log)  # fmt: skip
        cols.append(read(out, 4, channels))
    save(torch.stack(cols, 1).flatten(0, 1), "inpaint_strip.png", nrow=len(cols))

    if text:
        # The same noise: top row plain guidance, bottom row with a negative prompt.
        # Ancestral DDPM: after a short training DDIM drifts off the data for some noise seeds.
        prompt, negative = a.prompt or setup["negative"][0], a.negative or setup["negative"][1]
        ddpm = [f"ckpt={a.ckpt}", "sampler=ddpm", "sampler.steps=100", "batch_size=8"]
        rows = []
        for neg in (None, negative):
            out = work / f"neg_{neg is not None}"
            extra = [] if neg is None else [f"negative_prompt='{neg}'"]
            run([*ddpm, f"prompt='{prompt}'", *extra, "guidance.scale=3", "num_samples=8", f"out={out}"], log)
            rows.append(read(out, 8, channels))
        save(torch.cat(rows), "negative_prompt.png", nrow=8)
    (HERE / "commands.json").write_text(json.dumps(log, indent=1) + "\n")


if __name__ == "__main__":
    main()
