"""Write image grids to the run dir (and the logger) every N steps and at the end of training.

For an autoencoder the grid shows originals above reconstructions; for a latent model, samples
from fixed noise and fixed labels/captions with the EMA weights, so grids are comparable across steps.
The system draws the grid (``image_grid``) and says how many images go in a row (``grid_nrow``).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from latentgen.images import save_grid

log = logging.getLogger("latentgen")


class ImageGridCallback(L.Callback):
    def __init__(
        self, every_n_steps: int = 500, num_images: int = 64, out_dir: str = "images", seed: int = 1234
    ) -> None:
        super().__init__()
        self.every_n_steps = int(every_n_steps)
        self.num_images = int(num_images)
        self.out_dir = Path(out_dir)
        self.seed = seed
        self._last_step = 0
        self._written: tuple[int, Path] | None = None  # (global step, file) of the newest grid

    def _fixed_batch(self, trainer: L.Trainer) -> dict:
        """The first ``num_images`` val samples; all of them when the val split is smaller (a small folder)."""
        available = len(trainer.datamodule.dataset("val"))
        n = min(self.num_images, available)
        if n < self.num_images:
            log.info(
                "image grid: the val split has %d samples, fewer than num_grid_samples=%d; the grid shows %d",
                available,
                self.num_images,
                n,
            )
        return trainer.datamodule.fixed_batch(n, split="val")

    @rank_zero_only
    def write(self, trainer: L.Trainer, pl_module: L.LightningModule, tag: str) -> Path:
        """Render the grid for the current weights to ``<out_dir>/<tag>.png`` and log it."""
        was_training = pl_module.training
        pl_module.eval()
        try:
            gen = torch.Generator().manual_seed(self.seed)
            images = pl_module.image_grid(self._fixed_batch(trainer), generator=gen)  # (N, C, H, W) in [-1, 1]
        finally:
            pl_module.train(was_training)
        path = self.out_dir / f"{tag}.png"
        grid = save_grid(images, path, nrow=pl_module.grid_nrow(images.shape[0]))  # (C, H', W') in [0, 1]
        self._written = (int(trainer.global_step), path)
        for logger in trainer.loggers:
            log_image = getattr(logger, "log_image", None)
            if log_image is not None:
                log_image(key=f"images/{pl_module.kind}", images=[grid], step=trainer.global_step)
        return path

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A resumed run starts at its checkpoint's step: the next grid is due at the next multiple of
        # every_n_steps after it, not at the first batch (which would render the resumed weights again).
        self._last_step = int(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # global_step advances by 2 per batch under manual optimization with two optimizers,
        # so trigger on crossing a multiple of every_n_steps rather than on equality.
        step = trainer.global_step
        if self.every_n_steps > 0 and step // self.every_n_steps > self._last_step // self.every_n_steps:
            self._last_step = step
            self.write(trainer, pl_module, f"step_{step:06d}")

    def on_train_end(self, trainer, pl_module) -> None:
        if self._written is not None and self._written[0] == trainer.global_step:
            # max_steps is a multiple of every_n_steps: the same weights were rendered a moment ago
            # (64 samples x 100 sampler steps: 13-18 s of the demo on a CPU), so copy that grid.
            shutil.copyfile(self._written[1], self.out_dir / "final.png")  # only rank 0 wrote a grid
            return
        self.write(trainer, pl_module, "final")
