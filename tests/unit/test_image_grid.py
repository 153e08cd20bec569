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
        return torch.rand(4, 3, 8, 8, generator=generator) * 2 - 1  # (N, C, H, W) in [-1, 1]


def _trainer(step: int) -> SimpleNamespace:
    datamodule = SimpleNamespace(fixed_batch=lambda n, split: {"image": torch.zeros(n, 3, 8, 8)})
    return SimpleNamespace(global_step=step, is_global_zero=True, loggers=[], datamodule=datamodule)


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
