"""ImageGridCallback: grids every N steps, and a final grid that is not sampled twice."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from latentgen.callbacks.image_grid import ImageGridCallback


class CountingModule(nn.Module):
    kind = "latent_generative"

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def image_grid(self, batch, generator=None):
        self.calls += 1
        n = batch["image"].shape[0]
        return torch.rand(n, 3, 8, 8, generator=generator) * 2 - 1  # (N, C, H, W) in [-1, 1]

    @staticmethod
    def grid_nrow(num_images: int) -> int:
        return 2


class SmallDataModule:
    """A val split of ``num_val`` samples whose fixed_batch refuses more, as ImageDataModule does."""

    def __init__(self, num_val: int = 64) -> None:
        self.num_val = num_val

    def dataset(self, split: str) -> list[int]:
        return list(range(self.num_val))

    def fixed_batch(self, n: int, split: str = "val") -> dict:
        if n > self.num_val:
            raise ValueError(f"asked for {n} samples but the {split} split has {self.num_val}")
        return {"image": torch.zeros(n, 3, 8, 8)}


def _trainer(step: int, num_val: int = 64) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, is_global_zero=True, loggers=[], datamodule=SmallDataModule(num_val))


def _run(tmp_path, max_steps: int, every: int) -> tuple[CountingModule, list[str]]:
    cb, module = ImageGridCallback(every_n_steps=every, num_images=4, out_dir=str(tmp_path)), CountingModule()
    for step in range(1, max_steps + 1):
        cb.on_train_batch_end(_trainer(step), module, None, None, step - 1)
    cb.on_train_end(_trainer(max_steps), module)
    return module, sorted(p.name for p in tmp_path.iterdir())


def test_the_final_grid_reuses_the_grid_of_the_last_step(tmp_path):
    """max_steps a multiple of every_n_steps: the grid of step 6 and final.png show the same weights and
    noise, so the samples are drawn once (the demo sampled 64 x 100 DDPM steps twice)."""
    module, names = _run(tmp_path, max_steps=6, every=3)
    assert names == ["final.png", "step_000003.png", "step_000006.png"]
    assert module.calls == 2
    assert (tmp_path / "final.png").read_bytes() == (tmp_path / "step_000006.png").read_bytes()


def test_the_final_grid_is_sampled_when_the_last_step_had_none(tmp_path):
    module, names = _run(tmp_path, max_steps=7, every=3)
    assert names == ["final.png", "step_000003.png", "step_000006.png"]
    assert module.calls == 3


def test_a_val_split_smaller_than_the_grid_gives_a_smaller_grid(tmp_path, caplog):
    """A folder dataset with 5 val images and num_grid_samples=64: the grid shows the 5 (and says so)."""
    cb, module = ImageGridCallback(every_n_steps=1, num_images=64, out_dir=str(tmp_path)), CountingModule()
    with caplog.at_level("INFO", logger="latentgen"):
        cb.on_train_batch_end(_trainer(1, num_val=5), module, None, None, 0)
    assert module.calls == 1 and (tmp_path / "step_000001.png").is_file()
    assert "has 5 samples" in caplog.text


def test_a_resumed_run_does_not_render_its_first_batch_again(tmp_path):
    """Resumed at step 1000 with every_n_steps=500: the next grid is at step 1500, not at step 1001."""
    cb, module = ImageGridCallback(every_n_steps=500, num_images=4, out_dir=str(tmp_path)), CountingModule()
    cb.on_train_start(_trainer(1000), module)
    for step in range(1001, 1501):
        cb.on_train_batch_end(_trainer(step), module, None, None, step - 1001)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_001500.png"]
    assert module.calls == 1
