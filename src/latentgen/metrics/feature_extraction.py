"""Running an extractor over batches of images: in one process, or sharded over DDP ranks and gathered back
into batch order (so that the features equal one process's)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist

from latentgen.errors import DataError
from latentgen.metrics.distributed import gather_padded
from latentgen.metrics.extractors.base import FeatureExtractor, to_uint8_images

__all__ = ["extract_features", "extract_shard_and_gather", "images_of"]


def images_of(batch: Any) -> torch.Tensor:
    if torch.is_tensor(batch):
        return batch
    if isinstance(batch, Mapping) and "image" in batch:
        return batch["image"]
    if isinstance(batch, (list, tuple)) and batch and torch.is_tensor(batch[0]):
        return batch[0]
    raise DataError(
        f"cannot find images in a batch of type {type(batch).__name__}; expected a tensor or {{'image': ...}}"
    )


@torch.no_grad()
def extract_features(
    extractor: FeatureExtractor,
    batches: Iterable[Any],
    *,
    num_samples: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    desc: str = "features",
    allow_empty: bool = False,
) -> dict[str, torch.Tensor]:
    """Run ``extractor`` over batches (tensors or ``{"image": ...}`` dicts) until ``num_samples`` images.

    Returns ``{"features": (N, D)}`` (+ ``"logits"``), on the CPU. ``progress`` shows a tqdm bar with ETA.
    No images is a DataError, unless ``allow_empty`` (a DDP rank without a share): then ``{}``.
    """
    if device is not None:
        extractor.to(device)
    feats, logits, n = [], [], 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_samples, desc=desc, unit="img", dynamic_ncols=True)
    try:
        for batch in batches:
            images = images_of(batch)
            if num_samples is not None:
                images = images[: num_samples - n]
            if images.shape[0] == 0:
                break
            dev = next(extractor.parameters()).device if device is None else torch.device(device)
            out = extractor(to_uint8_images(images.to(dev)))
            feats.append(out["features"].float().cpu())
            if "logits" in out:
                logits.append(out["logits"].float().cpu())
            n += images.shape[0]
            if bar is not None:
                bar.update(images.shape[0])
            if num_samples is not None and n >= num_samples:
                break
    finally:
        if bar is not None:
            bar.close()
    if n == 0:
        if allow_empty:
            return {}
        raise DataError(f"extract_features ({desc}): the batches yielded no images")
    result = {"features": torch.cat(feats)}
    if logits:
        result["logits"] = torch.cat(logits)
    return result


def extract_shard_and_gather(
    extractor: FeatureExtractor,
    batches: Iterable[Any],
    num_samples: int,
    rank: int,
    world: int,
    device: torch.device | str | None,
    comm_device: torch.device,
    progress: bool,
) -> dict[str, torch.Tensor]:
    """This rank's share of the first ``num_samples`` images (batches rank, rank + world, ...), extracted,
    then all ranks' features gathered and put back in the order of the batches."""
    positions: list[torch.Tensor] = []  # the global position of each image this rank extracts

    def my_batches():
        seen = 0
        for index, batch in enumerate(batches):
            images = images_of(batch)[: num_samples - seen]  # (B, C, H, W)
            if images.shape[0] == 0:
                return
            if index % world == rank:
                positions.append(torch.arange(seen, seen + images.shape[0]))
                yield images
            seen += images.shape[0]

    out = extract_features(extractor, my_batches(), device=device, progress=progress and rank == 0,
                           desc=f"reference (rank 0 of {world})", allow_empty=True)  # fmt: skip
    parts = {"features": out.get("features"), "logits": out.get("logits")}
    n = 0 if parts["features"] is None else parts["features"].shape[0]
    # Sizes first: a rank with no share knows neither D nor whether there are logits.
    dims = torch.tensor([n, *(0 if v is None else v.shape[1] for v in parts.values())], device=comm_device)
    all_dims = [torch.zeros_like(dims) for _ in range(world)]
    dist.all_gather(all_dims, dims)
    counts = [int(d[0]) for d in all_dims]
    longest = max(counts)
    if longest == 0:
        raise DataError("reference features: the batches yielded no images")
    where = torch.cat(positions) if positions else torch.zeros(0, dtype=torch.long)
    gathered = {"positions": gather_padded(where.to(comm_device).unsqueeze(1), longest, counts, world)}
    for i, (name, value) in enumerate(parts.items(), start=1):
        width = max(int(d[i]) for d in all_dims)
        if width == 0:
            continue  # no rank has this output (logits of an extractor without a head)
        local = value if value is not None else torch.zeros(0, width)
        gathered[name] = gather_padded(local.to(comm_device), longest, counts, world)
    order = torch.argsort(gathered.pop("positions").squeeze(1))  # (N,) back to batch order
    return {name: v[order].cpu() for name, v in gathered.items()}
