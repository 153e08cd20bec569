"""Measure the conditional shapes tasks and draw labelled grids for experiments/shapes_conditioning/README.md.

    python experiments/shapes_conditioning/evaluate_tasks.py text2img outputs/shapes_conditioning/text2img \
        --classifier .cache/latentgen/classifiers/shapes_attributes_32px.safetensors
    python experiments/shapes_conditioning/evaluate_tasks.py inpaint  outputs/shapes_conditioning/inpaint
    python experiments/shapes_conditioning/evaluate_tasks.py superres outputs/shapes_conditioning/superres
    python experiments/shapes_conditioning/evaluate_tasks.py semantic outputs/shapes_conditioning/semantic \
        --classifier .cache/latentgen/classifiers/shapes_attributes_32px.safetensors

Each writes ``<task>_results.json`` and PNG grids beside this file. Samples use the EMA weights, fixed
seeds, the checkpoint's sampler with ``--steps`` DDIM steps, on the first ``--n`` validation images.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from PIL import Image, ImageDraw, ImageFont

from latentgen.config import register_resolvers
from latentgen.config import instantiate
from latentgen.app.building import load_system_from_checkpoint

HERE = Path(__file__).resolve().parent

GRID_PROMPTS = [
    "a large red circle at the center",
    "a large blue square at the top left",
    "a medium green triangle at the bottom right",
    "a large yellow star at the middle left",
    "a small white cross at the top right",
    "a large magenta ring at the bottom center",
    "a medium striped cyan square at the center",
    "a large spotted red triangle at the top center",
]


# ---------------------------------------------------------------------------------------------- drawing
def to_pil(x: torch.Tensor, scale: int) -> Image.Image:
    """(C, H, W) in [-1, 1] -> RGB PIL image upscaled (nearest) by ``scale``."""
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte()
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    img = Image.fromarray(x.permute(1, 2, 0).cpu().numpy())  # (H, W, 3)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def labelled_grid(rows: list[tuple[str, list[torch.Tensor]]], scale: int = 3, label_width: int = 300, gap: int = 2,
                  header: list[str] | None = None) -> Image.Image:  # fmt: skip
    """One row per (label, [images (C, H, W)]); the label is drawn to the left of the row."""
    font = ImageFont.load_default()
    cell_w = max(im.shape[-1] for _, ims in rows for im in ims) * scale
    cell_h = max(im.shape[-2] for _, ims in rows for im in ims) * scale
    ncol = max(len(ims) for _, ims in rows)
    top = 14 if header else 0
    canvas = Image.new("RGB", (label_width + ncol * (cell_w + gap), top + len(rows) * (cell_h + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, text in enumerate(header or []):
        draw.text((label_width + j * (cell_w + gap) + 2, 1), text, fill="black", font=font)
    for r, (label, ims) in enumerate(rows):
        y = top + r * (cell_h + gap)
        draw.text((4, y + cell_h // 2 - 6), label, fill="black", font=font)
        for c, im in enumerate(ims):
            canvas.paste(to_pil(im, scale), (label_width + c * (cell_w + gap), y))
    return canvas


# ---------------------------------------------------------------------------------------------- helpers
def load(run_dir: str):
    register_resolvers()
    system, stored = load_system_from_checkpoint(str(Path(run_dir) / "checkpoints" / "last.ckpt"))
    return system.eval(), stored


def val_batch(stored, n: int) -> dict:
    datamodule = instantiate(OmegaConf.create(OmegaConf.to_container(stored.data)))
    return datamodule.fixed_batch(n, split="val")


SAMPLER = None  # None: the checkpoint's sampler; --sampler ddpm|ddim replaces it


def sample_all(system, batch: dict, steps: int, scale: float, seed: int = 0, chunk: int = 64) -> torch.Tensor:
    """Samples for every row of ``batch`` in chunks; chunk i uses generator seed ``seed + i`` (fixed noise)."""
    n = len(next(v for v in batch.values() if isinstance(v, (list, torch.Tensor))))
    outs = []
    for i, start in enumerate(range(0, n, chunk)):
        part = {k: v[start : start + chunk] for k, v in batch.items() if isinstance(v, (list, torch.Tensor))}
        g = torch.Generator().manual_seed(seed + i)
        outs.append(system.sample(part, generator=g, steps=steps, guidance_scale=scale, sampler=SAMPLER))
    return torch.cat(outs)


def sampler_name(system) -> str:
    return type(SAMPLER or system.sampler).__name__


def reconstruct(system, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return system.decode(system.first_stage.encode_scaled(images, sample=False))


def write(task: str, results: dict) -> None:
    path = HERE / f"{task}_results.json"
    path.write_text(json.dumps(results, indent=2, sort_keys=True))
    print(json.dumps(results, indent=2, sort_keys=True))
    print(f"wrote {path}")


# ---------------------------------------------------------------------------------------------- tasks
def text2img(args) -> None:
    from latentgen.metrics.attribute_classifier import attribute_alignment, load_attribute_classifier
    from latentgen.metrics.prompt_evaluation import batch_from_prompts, check_prompt_supported

    system, stored = load(args.run_dir)
    check_prompt_supported(system.conditioner)
    clf = load_attribute_classifier(args.classifier)
    real = val_batch(stored, args.n)
    prompts = list(real["caption"])
    results: dict = {
        "n": len(prompts),
        "steps": args.steps,
        "classifier_val_accuracy": clf.meta["val_accuracy"],
        "sampler": sampler_name(system),
    }
    # references: real val images with their own captions (classifier ceiling), through the autoencoder,
    # and with the captions shuffled (chance for this prompt distribution)
    results["real_images"] = attribute_alignment(clf, real["image"], prompts)
    results["ae_reconstructions"] = attribute_alignment(clf, reconstruct(system, real["image"]), prompts)
    shuffled = [prompts[i] for i in torch.randperm(len(prompts), generator=torch.Generator().manual_seed(0))]
    results["real_images_shuffled_prompts"] = attribute_alignment(clf, real["image"], shuffled)
    batch = {"caption": prompts}
    for scale in args.scales:
        t0 = time.perf_counter()
        images = sample_all(system, batch, args.steps, scale)
        res = attribute_alignment(clf, images, prompts)
        res["sampling_seconds"] = time.perf_counter() - t0
        results[f"guidance_{scale:g}"] = res
        print(f"guidance {scale:g}: alignment {res['alignment']:.3f} ({res['sampling_seconds']:.0f} s)", flush=True)
    write("text2img", results)
    # grids: 8 prompts x 8 samples at the largest scale; 4 prompts x 4 samples at every scale (same noise)
    scale = max(args.scales)
    grid_batch = batch_from_prompts(GRID_PROMPTS, num_samples=8)
    images = sample_all(system, grid_batch, args.steps, scale, seed=100)
    rows = [(p, list(images[8 * i : 8 * i + 8])) for i, p in enumerate(GRID_PROMPTS)]
    labelled_grid(rows, scale=3, label_width=290).save(HERE / "text2img_grid.png")
    few = batch_from_prompts(GRID_PROMPTS[:4], num_samples=4)
    rows = []
    for s in args.scales:
        ims = sample_all(system, few, args.steps, s, seed=200)
        rows.append((f"guidance {s:g}", list(ims)))
    header = [p.replace("a ", "").split(" at ")[0] if i % 4 == 0 else "" for i, p in enumerate(few["caption"])]
    labelled_grid(rows, scale=2, label_width=80, header=header).save(HERE / "text2img_guidance.png")


def inpaint(args) -> None:
    from task_metrics import inpainting_metrics  # beside this script

    lp = st_lpips()
    system, stored = load(args.run_dir)
    cond = system.ema.shadow["conditioner"].eval()
    batch = val_batch(stored, args.n)
    mask = cond.mask_for(batch)  # the fixed eval masks the sampler also uses
    batch = dict(batch, inpaint_mask=mask)

    t0 = time.perf_counter()
    samples = sample_all(system, batch, args.steps, 1.0)
    seconds = time.perf_counter() - t0
    composite = cond.paste_known(samples, batch, mask)
    grey = batch["image"] * (1 - mask)  # the hole left at mid grey: what the model is given
    results = {
        "n": args.n, "steps": args.steps, "sampling_seconds": seconds, "sampler": sampler_name(system),
        "lpips": "ST-LPIPS (alex), composite vs original",
        "model_raw": inpainting_metrics(samples, batch["image"], mask, lp),
        "model_composite": inpainting_metrics(composite, batch["image"], mask, lp),
        "baseline_grey_hole": inpainting_metrics(grey, batch["image"], mask, lp),
        "ae_reconstruction": inpainting_metrics(reconstruct(system, batch["image"]), batch["image"], mask, lp),
    }  # fmt: skip
    write("inpaint", results)
    vis = cond.visualize(batch)
    rows = [(f"val {i}", [vis[i], samples[i], batch["image"][i]]) for i in range(12)]
    pairs = [(f"{rows[i][0]} / {rows[i + 6][0]}", rows[i][1] + rows[i + 6][1]) for i in range(6)]
    labelled_grid(pairs, scale=3, label_width=80, header=["masked input", "output", "original"] * 2).save(
        HERE / "inpaint_grid.png"
    )


def st_lpips():
    """ST-LPIPS (alex): the perceptual distance that runs offline (see conf/perceptual/stlpips.yaml)."""
    from latentgen.autoencoders.perceptual import ShiftTolerantLPIPS

    net = ShiftTolerantLPIPS(net="alex").eval()

    def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net(a, b).reshape(-1)  # (B,)

    return distance


def superres(args) -> None:
    from task_metrics import superres_metrics  # beside this script

    lp = st_lpips()
    system, stored = load(args.run_dir)
    cond = system.ema.shadow["conditioner"].eval()
    batch = val_batch(stored, args.n)
    t0 = time.perf_counter()
    samples = sample_all(system, batch, args.steps, 1.0)
    seconds = time.perf_counter() - t0
    bicubic = cond.bicubic_baseline(batch)
    results = {
        "n": args.n, "steps": args.steps, "sampling_seconds": seconds, "sampler": sampler_name(system),
        "factor": cond.factor,
        "lpips": "ST-LPIPS (alex)",
        "model": superres_metrics(samples, batch["image"], lp),
        "baseline_bicubic": superres_metrics(bicubic, batch["image"], lp),
        "ae_reconstruction": superres_metrics(reconstruct(system, batch["image"]), batch["image"], lp),
    }  # fmt: skip
    write("superres", results)
    vis = cond.visualize(batch)
    rows = [(f"val {i}", [vis[i], bicubic[i], samples[i], batch["image"][i]]) for i in range(12)]
    pairs = [(f"{rows[i][0]} / {rows[i + 6][0]}", rows[i][1] + rows[i + 6][1]) for i in range(6)]
    labelled_grid(pairs, scale=3, label_width=80, header=["8px input", "bicubic", "output", "32px target"] * 2).save(
        HERE / "superres_grid.png"
    )


def semantic(args) -> None:
    from latentgen.metrics.attribute_classifier import load_attribute_classifier

    system, stored = load(args.run_dir)
    cond = system.ema.shadow["conditioner"].eval()
    clf = load_attribute_classifier(args.classifier)
    datamodule = instantiate(OmegaConf.create(OmegaConf.to_container(stored.data)))
    batch = datamodule.fixed_batch(args.n, split="val")
    ds = datamodule.dataset("val")
    truth = {a: torch.tensor([ds.attributes(i)[a] for i in range(args.n)]) for a in ("kind", "size", "position")}
    t0 = time.perf_counter()
    samples = sample_all(system, batch, args.steps, 1.0)
    seconds = time.perf_counter() - t0

    def agreement(images: torch.Tensor) -> dict[str, float]:
        pred = clf.predict(images)
        return {a: float((pred[a] == truth[a]).float().mean()) for a in truth}

    # the layout (kind, size, position) is in the map; colour and pattern are not, so they are not scored
    shuffled = torch.randperm(args.n, generator=torch.Generator().manual_seed(0))
    results = {
        "n": args.n, "steps": args.steps, "sampling_seconds": seconds, "sampler": sampler_name(system),
        "model": agreement(samples), "real_images": agreement(batch["image"]),
        "real_images_other_maps": agreement(batch["image"][shuffled]),
    }  # fmt: skip
    write("semantic", results)
    vis = cond.visualize(batch)
    rows = [(f"val {i}", [vis[i], samples[i], batch["image"][i]]) for i in range(12)]
    pairs = [(f"{rows[i][0]} / {rows[i + 6][0]}", rows[i][1] + rows[i + 6][1]) for i in range(6)]
    header = ["map", "output", "original"] * 2
    labelled_grid(pairs, scale=3, label_width=80, header=header).save(HERE / "semantic_grid.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=["text2img", "inpaint", "superres", "semantic"])
    parser.add_argument("run_dir")
    parser.add_argument("--classifier", default=os.environ.get("LATENTGEN_ATTRIBUTE_CLASSIFIER"))
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0])
    parser.add_argument("--sampler", choices=["ddpm", "ddim"], default=None, help="default: the checkpoint's")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta with --sampler ddim")
    args = parser.parse_args()
    global SAMPLER
    from latentgen.generative.samplers import DDIMSampler, DDPMSampler

    if args.sampler == "ddpm":
        SAMPLER = DDPMSampler(steps=args.steps)
    elif args.sampler == "ddim":
        SAMPLER = DDIMSampler(steps=args.steps, eta=args.eta)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    {"text2img": text2img, "inpaint": inpaint, "superres": superres, "semantic": semantic}[args.task](args)


if __name__ == "__main__":
    main()
