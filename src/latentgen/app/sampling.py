"""The sampling root: ``sample(cfg)`` writes N numbered PNGs and ``samples.json`` for one checkpoint.

``python -m latentgen.sample ckpt=... num_samples=N out=DIR`` (conf/sample.yaml):

1. join the process group when started by ``torchrun`` (the torchrun join of the evaluation root);
2. rebuild the latent model from the checkpoint's own config (allow-listed), optionally with another sampler,
   step count or guidance scale;
3. plan the images: image ``i`` belongs to batch ``j``; batch ``j`` is conditioned on prompts (cycled), classes
   (cycled) or, by default, on the data's condition batches exactly as ``evaluate.py`` draws them, and its
   noise comes from :func:`~latentgen.metrics.generator_evaluation.batch_generator` ``(seed, j)``. So the
   images do not depend on the number of processes, and they are the images ``evaluate.py`` measures with the
   same seed, batch size and sampler;
4. rank ``r`` draws the batches ``j = r, r + world, ...`` whose PNGs are not all on disk yet (resumable), with
   optional image-to-image (``init_image``, ``strength``), inpainting (``init_image``, ``mask``), a negative
   prompt and the guidance options;
5. rank 0 writes ``samples.json``: per image its file, seed, batch, sampler, steps, guidance and condition.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from latentgen.app.building import check_output_dir, load_system_from_checkpoint, silence_expected_warnings
from latentgen.app.evaluation import chosen_device, join_torchrun, stored_overrides
from latentgen.config import instantiate
from latentgen.errors import ConfigError
from latentgen.files import atomic_write, atomic_write_json
from latentgen.metrics.distributed import rank_and_world
from latentgen.metrics.extractors.base import to_uint8_images
from latentgen.metrics.generator_evaluation import batch_generator, condition_batches, to_device
from latentgen.metrics.prompt_evaluation import check_prompt_supported
from latentgen.systems.autoencoder import AutoencoderSystem

log = logging.getLogger("latentgen")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class PlannedBatch:
    """Batch ``index``: the images ``first .. first + size - 1``, their condition and what to record."""

    index: int
    first: int
    batch: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.records)

    def files(self, out: Path) -> list[Path]:
        return [out / r["file"] for r in self.records]


def image_name(index: int) -> str:
    return f"{index:06d}.png"


def sample(cfg: DictConfig) -> dict[str, Any]:
    """Write ``cfg.num_samples`` images of ``cfg.ckpt`` to ``cfg.out``; returns the ``samples.json`` record."""
    silence_expected_warnings()
    device, joined = join_torchrun(chosen_device(cfg))
    try:
        rank, world = rank_and_world()
        return sample_shard(cfg, device, rank=rank, world=world)
    finally:
        if joined:
            torch.distributed.destroy_process_group()


def sample_shard(cfg: DictConfig, device: torch.device, *, rank: int, world: int) -> dict[str, Any]:
    """The share of rank ``rank`` of ``world``: its batches are drawn (those already on disk skipped); rank 0
    writes ``samples.json``. Called with ``world > 1`` outside a process group, it is the in-process sharding
    (each call draws its own share; rank 0's record describes all images)."""
    out = check_output_dir(cfg.out)
    system, stored = load_system_from_checkpoint(str(cfg.ckpt), stored_overrides(cfg))
    if isinstance(system, AutoencoderSystem):
        raise ConfigError(f"'{cfg.ckpt}' is an autoencoder: python -m latentgen.sample needs a latent model")
    system = system.to(device).eval()
    options = sampling_options(cfg, system, stored)
    plan = list(plan_batches(cfg, system, stored))
    mine = [b for b in plan if b.index % world == rank]
    todo = [b for b in mine if not all(p.is_file() for p in b.files(out))]
    skipped = sum(b.size for b in mine) - sum(b.size for b in todo)
    if skipped:
        log.info("rank %d: %d images already on disk are skipped", rank, skipped)
    batches: Any = todo
    if cfg.get("progress", True) and rank == 0:
        from tqdm.auto import tqdm

        batches = tqdm(todo, desc=f"sampling {sum(b.size for b in todo)} images", unit="batch")
    for planned in batches:
        images = draw_batch(system, planned, options, int(cfg.seed), device)
        for path, image in zip(planned.files(out), to_uint8_images(images.cpu()), strict=True):
            if not path.is_file():
                save_png(image[: images.shape[1]], path)  # (C, H, W) uint8, C = 1 or 3
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
    described = options.describe()
    per_image = {"sampler": described["sampler"], "steps": described["steps"], "guidance": described["guidance"]}
    record = {
        "ckpt": str(cfg.ckpt),
        "num_samples": sum(b.size for b in plan),
        "batch_size": int(cfg.batch_size),
        "seed": int(cfg.seed),
        **described,
        "world_size": world,
        "images": [{**r, **per_image, **options.inputs_of(r["index"])} for b in plan for r in b.records],
    }
    if rank == 0:
        atomic_write_json(out / "samples.json", record)
    return record


# ---------------------------------------------------------------------------------------------- options
@dataclass
class SamplingOptions:
    """What every batch is sampled with besides its condition and noise."""

    sampler: str
    steps: int | None
    guidance_scale: float
    guidance_rescale: float = 0.0
    guidance_interval: tuple[float, float] | None = None
    negative_prompt: str | None = None
    strength: float = 1.0
    resample: int = 1
    jump: int = 1
    init_images: torch.Tensor | None = None  # (K, C, H, W) in [-1, 1], cycled over the images
    init_files: list[str] = field(default_factory=list)
    masks: torch.Tensor | None = None  # (K', 1, H, W) in {0, 1}, 1 = generate, cycled
    mask_files: list[str] = field(default_factory=list)
    model_inpaints: bool = False  # conditioner=inpaint: the mask conditions the model, no blending

    def inputs_of(self, index: int) -> dict[str, str]:
        """The init image and mask files of image ``index`` (cycled)."""
        out = {}
        if self.init_files:
            out["init_image"] = self.init_files[index % len(self.init_files)]
        if self.mask_files:
            out["mask"] = self.mask_files[index % len(self.mask_files)]
        return out

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sampler": self.sampler,
            "steps": self.steps,
            "guidance": {
                "scale": self.guidance_scale,
                "rescale": self.guidance_rescale,
                "interval": None if self.guidance_interval is None else list(self.guidance_interval),
                "negative_prompt": self.negative_prompt,
            },
        }
        if self.init_images is not None:
            out.update(strength=self.strength)
        if self.masks is not None:
            out.update(
                resample=self.resample, jump=self.jump, inpainting="model" if self.model_inpaints else "latent blending"
            )
        return out


def sampling_options(cfg: DictConfig, system, stored: DictConfig) -> SamplingOptions:
    scale = float(stored.guidance.scale) if cfg.guidance.get("scale") is None else float(cfg.guidance.scale)
    interval = cfg.guidance.get("interval")
    if interval is not None:
        interval = tuple(float(v) for v in interval)
        if len(interval) != 2:
            raise ConfigError(f"guidance.interval={list(interval)} must be [t_lo, t_hi]")
    negative = cfg.get("negative_prompt") or None
    if negative is not None:
        check_prompt_supported(system.conditioner)
        if scale == 1.0:
            raise ConfigError("negative_prompt=... acts through guidance: set guidance.scale != 1 (e.g. 4)")
    resolution = int(stored.data.resolution)
    channels = getattr(system.first_stage.encoder, "in_channels", None)  # image channels (1 or 3)
    init_images, init_files = None, []
    if cfg.get("init_image"):
        init_files = image_files(cfg.init_image, "init_image")
        init_images = torch.stack([load_image(p, resolution, channels) for p in init_files])  # (K, C, H, W)
    masks, mask_files = None, []
    if cfg.get("mask"):
        if init_images is None:
            raise ConfigError("mask=... needs init_image=... (the image whose unmasked region is kept)")
        mask_files = image_files(cfg.mask, "mask")
        masks = torch.stack([load_mask(p, resolution) for p in mask_files])  # (K', 1, H, W)
    strength = cfg.get("strength")
    if strength is None:
        strength = 0.6 if init_images is not None and masks is None else 1.0
    if init_images is None and float(strength) != 1.0:
        raise ConfigError(f"strength={strength} needs init_image=<path|folder>")
    model_inpaints = masks is not None and hasattr(system.conditioner, "paste_known")
    if model_inpaints and float(strength) != 1.0:
        raise ConfigError("a model trained with conditioner=inpaint samples from noise: leave strength out")
    return SamplingOptions(
        sampler=str(stored.model.sampler.get("_target_")),
        steps=stored.model.sampler.get("steps"),
        guidance_scale=scale,
        guidance_rescale=float(cfg.guidance.get("rescale") or 0.0),
        guidance_interval=interval,  # type: ignore[arg-type]
        negative_prompt=negative,
        strength=float(strength),
        resample=int(cfg.get("resample") or 1),
        jump=int(cfg.get("jump") or 1),
        init_images=init_images,
        init_files=[str(p) for p in init_files],
        masks=masks,
        mask_files=[str(p) for p in mask_files],
        model_inpaints=model_inpaints,
    )


# ---------------------------------------------------------------------------------------------- plan
def prompts_of(cfg: DictConfig) -> list[str] | None:
    """Prompts from ``prompt=`` (a string or a list) and/or ``prompt_file=`` (one per line)."""
    prompts: list[str] = []
    given = cfg.get("prompt")
    if given not in (None, "", []):
        prompts += [given] if isinstance(given, str) else [str(p) for p in given]
    if cfg.get("prompt_file"):
        path = Path(str(cfg.prompt_file))
        if not path.is_file():
            raise ConfigError(f"prompt_file={path} does not exist")
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return prompts or None


def plan_batches(cfg: DictConfig, system, stored: DictConfig) -> Iterator[PlannedBatch]:
    """The batches of the ``num_samples`` images, in order. Conditions cycle over the prompts or classes
    given; without either, the batches are the data's condition batches of ``evaluate.py``."""
    n, bs = int(cfg.num_samples), int(cfg.batch_size)
    if n < 1 or bs < 1:
        raise ConfigError(f"num_samples={n} and batch_size={bs} must be >= 1")
    prompts, classes = prompts_of(cfg), cfg.get("classes")
    if prompts is not None and classes not in (None, []):
        raise ConfigError("give prompt/prompt_file or classes, not both")
    if prompts is not None:
        check_prompt_supported(system.conditioner)
        source: Iterator[dict[str, Any]] = (
            {"caption": [prompts[i % len(prompts)] for i in range(start, min(start + bs, n))]}
            for start in range(0, n, bs)
        )
    elif classes not in (None, []):
        labels = [int(c) for c in (classes if OmegaConf.is_list(classes) or isinstance(classes, list) else [classes])]
        source = (
            {"label": torch.tensor([labels[i % len(labels)] for i in range(start, min(start + bs, n))])}
            for start in range(0, n, bs)
        )
    else:
        datamodule = instantiate(stored.data)
        split = str(cfg.get("split", "train"))
        datamodule.setup("fit" if split == "train" else "validate")
        source = condition_batches(datamodule, split, bs, n)
    first = 0
    for index, batch in enumerate(source):
        size = _batch_len(batch)
        records = []
        for k in range(size):
            i = first + k
            rec: dict[str, Any] = {
                "index": i,
                "file": image_name(i),
                "seed": int(cfg.seed),
                "batch": index,
                "generator_seed": int(batch_generator(int(cfg.seed), index).initial_seed()),
            }
            if "caption" in batch:
                rec["prompt"] = str(batch["caption"][k])
            if "label" in batch:
                rec["class"] = int(batch["label"][k])
            records.append(rec)
        yield PlannedBatch(index=index, first=first, batch=batch, records=records)
        first += size


def _batch_len(batch: dict[str, Any]) -> int:
    for v in batch.values():
        if isinstance(v, torch.Tensor) or isinstance(v, list):
            return len(v)
    raise ConfigError(f"cannot tell the size of a condition batch with keys {sorted(batch)}")


# ---------------------------------------------------------------------------------------------- drawing
def cycled(items: torch.Tensor, first: int, size: int) -> torch.Tensor:
    """Rows ``first .. first + size - 1`` of ``items`` taken cyclically: (size, ...)."""
    idx = torch.arange(first, first + size) % items.shape[0]
    return items[idx]


def latent_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """Pixel mask (B, 1, H, W), 1 = generate -> latent mask (B, 1, H/f, W/f): a latent pixel is generated when
    any of its f x f pixels is (max pooling), so every known latent covers known pixels only."""
    return F.max_pool2d(mask, kernel_size=factor) if factor > 1 else mask


@torch.no_grad()
def draw_batch(
    system, planned: PlannedBatch, options: SamplingOptions, seed: int, device, return_latents: bool = False
) -> torch.Tensor:
    """The images of one planned batch in [-1, 1], (b, C, H, W), with the noise of ``batch_generator``
    (the latents (b, c, h, w) with ``return_latents``)."""
    batch = to_device(dict(planned.batch), device)
    b = planned.size
    start: dict[str, Any] = {}
    if options.init_images is not None:
        init = cycled(options.init_images, planned.first, b).to(device)  # (b, C, H, W)
        mask = None if options.masks is None else cycled(options.masks, planned.first, b).to(device)
        if options.model_inpaints:
            batch.update(image=init, inpaint_mask=mask)  # the model's own inpainting path
        else:
            start = {"init": system.encode(init), "strength": options.strength}
            if mask is not None:
                f = int(system.first_stage.downsample_factor)
                start.update(mask=latent_mask(mask, f), resample=options.resample, jump=options.jump)
    uncond_batch = None if options.negative_prompt is None else {"caption": [options.negative_prompt] * b}
    return system.sample(
        batch,
        generator=batch_generator(seed, planned.index),
        uncond_batch=uncond_batch,
        guidance_rescale=options.guidance_rescale,
        guidance_interval=options.guidance_interval,
        return_latents=return_latents,
        **start,
    )


# ---------------------------------------------------------------------------------------------- files
def image_files(spec: Any, what: str) -> list[Path]:
    """A file, or the images of a folder in name order."""
    path = Path(str(spec))
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ConfigError(f"{what}={path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return files
    if not path.is_file():
        raise ConfigError(f"{what}={path} is neither an image file nor a folder")
    return [path]


def load_image(path: Path, resolution: int, channels: int | None) -> torch.Tensor:
    """(C, resolution, resolution) float in [-1, 1] (bicubic resize; C = the first stage's input channels)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L" if channels == 1 else "RGB").resize((resolution, resolution), Image.BICUBIC)
        x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(resolution, resolution, -1)
    return x.permute(2, 0, 1).float() / 127.5 - 1.0  # (C, H, W)


def load_mask(path: Path, resolution: int) -> torch.Tensor:
    """(1, resolution, resolution) float in {0, 1}: white (> 127) = generate, black = keep (nearest resize)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L").resize((resolution, resolution), Image.NEAREST)
        x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(1, resolution, resolution)
    return (x > 127).float()


def save_png(image: torch.Tensor, path: Path) -> None:
    """(C, H, W) uint8, C = 1 or 3 -> PNG, written atomically (a killed run leaves no half file)."""
    from PIL import Image

    array = image.permute(1, 2, 0).numpy()  # (H, W, C)
    pil = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)  # uint8: mode L or RGB
    atomic_write(path, lambda f: pil.save(f, format="PNG"))
