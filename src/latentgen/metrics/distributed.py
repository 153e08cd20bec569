"""The collectives of a DDP evaluation: who this process is, and gathering rows of unequal counts.

Outside an initialised process group of several ranks nothing here communicates.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["comm_device", "gather_padded", "on_every_rank", "rank_and_world"]


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the initialised default process group; (0, 1) outside DDP."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def comm_device(module: torch.nn.Module, device: torch.device | str | None) -> torch.device:
    """Where collective tensors live: the module's device (NCCL needs GPU tensors, gloo takes CPU ones)."""
    if device is not None:
        return torch.device(device)
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def on_every_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on every rank (a collective: every rank must call it)."""
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def gather_padded(local: torch.Tensor, longest: int, counts: list[int], world: int) -> torch.Tensor:
    """all_gather rows of unequal counts: pad each rank's (n_r, D) to (longest, D), gather, drop the padding."""
    padded = torch.zeros(longest, local.shape[1], dtype=local.dtype, device=local.device)  # (longest, D)
    padded[: local.shape[0]] = local
    slots = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(slots, padded)
    return torch.cat([slot[:n] for slot, n in zip(slots, counts)])  # (sum n_r, D)
