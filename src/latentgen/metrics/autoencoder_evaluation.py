"""The evaluation of an autoencoder: reconstructions of the val split (PSNR, SSIM, LPIPS, rFID).

:func:`reconstruct_val_split` is shared by ``evaluate.py`` on an autoencoder checkpoint and by the
in-training evaluation of a latent model, which measures its frozen first stage once at the start.
"""

from __future__ import annotations

import torch

from latentgen.metrics.distributed import rank_and_world
from latentgen.metrics.generator_evaluation import as_rgb


@torch.no_grad()
def reconstruct_val_split(datamodule, reconstruct, rec, rfid, num_samples: int, device) -> torch.Tensor | None:
    """Feed (up to ``num_samples`` of) the val split and ``reconstruct(x)`` of it into the metrics ``rec``
    (ReconstructionMetrics) and ``rfid`` (GenerativeMetrics or None). Under DDP each rank takes batches
    rank, rank + world, ...; the metrics gather them on compute(). Returns the first 32 originals and
    their reconstructions (this rank's first batch), or None when this rank had no batch."""
    rank, world = rank_and_world()
    first = None
    seen = 0
    for index, batch in enumerate(datamodule.val_dataloader()):
        x = batch["image"][: num_samples - seen]  # (B, C, H, W)
        seen += x.shape[0]
        if index % world == rank:
            x = x.to(device)
            recon = reconstruct(x)  # (B, C, H, W)
            if first is None:
                first = torch.cat([x[:32], recon[:32]]).cpu()  # (2 * min(B, 32), C, H, W)
            rec.update(recon, x)
            if rfid is not None:
                rfid.update(as_rgb(x), real=True)
                rfid.update(as_rgb(recon), real=False)
        if seen >= num_samples:
            break
    return first


@torch.no_grad()
def autoencoder_metrics(system, datamodule, extractor, lpips, *, num_samples: int) -> tuple[dict, torch.Tensor | None]:
    """PSNR / SSIM / LPIPS (mean and std) of reconstructions of the val split, and rFID with an extractor.

    ``lpips`` is the perceptual network the evaluation chose (None: no LPIPS); it is independent of the
    perceptual loss the autoencoder was trained with, so every autoencoder gets the same measurement.
    """
    from latentgen.metrics.generative_metrics import GenerativeMetrics
    from latentgen.metrics.reconstruction import ReconstructionMetrics

    datamodule.setup("validate")
    rec = ReconstructionMetrics(lpips=lpips).to(system.device)
    rfid = GenerativeMetrics(extractor, metrics=["fid"]).to(system.device) if extractor is not None else None
    first = reconstruct_val_split(datamodule, system.reconstruct, rec, rfid, num_samples, system.device)
    results = dict(rec.compute())
    if rfid is not None:
        results["rfid"] = rfid.compute()["fid"]
    return results, first
