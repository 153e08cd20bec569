"""ImageDataModule: per-rank batch size, checks against the dataset, reproducible order, Hydra configs."""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from latentgen.config import register_resolvers
from latentgen.data import ImageDataModule, PatchesDataset, ShapesDataset
from latentgen.data.sampling import EpochShuffleSampler
from latentgen.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf"


def _shapes_dm(**kw) -> ImageDataModule:
    factory = functools.partial(ShapesDataset, resolution=16, channels=3, num_train=40, num_val=12)
    kw.setdefault("batch_size", 8)
    return ImageDataModule(factory, resolution=16, channels=3, num_classes=6, **kw)


def _attach(dm: ImageDataModule, world_size: int, rank: int = 0) -> None:
    dm.trainer = SimpleNamespace(world_size=world_size, global_rank=rank)  # what setup() reads


def test_per_rank_batch_size_and_divisibility() -> None:
    dm = _shapes_dm(batch_size=8, val_batch_size=4)
    _attach(dm, world_size=4)
    dm.setup("fit")
    assert dm.train_dataloader().batch_size == 2 and dm.val_dataloader().batch_size == 1
    bad = _shapes_dm(batch_size=8)
    _attach(bad, world_size=3)
    with pytest.raises(ConfigError, match=r"data.batch_size=8 .* world size 3"):
        bad.setup("fit")
    detached = _shapes_dm(batch_size=8)
    detached.setup("fit")
    assert detached.per_rank_batch_size == 8


def test_properties_and_consistency_checks() -> None:
    dm = _shapes_dm()
    assert (dm.resolution, dm.channels, dm.num_classes) == (16, 3, 6)
    factory = functools.partial(ShapesDataset, resolution=32)
    with pytest.raises(ConfigError, match=r"data.resolution=16 but data.dataset.resolution=32"):
        ImageDataModule(factory, resolution=16)
    wrong_classes = ImageDataModule(functools.partial(PatchesDataset, num_val=4), num_classes=10)
    with pytest.raises(ConfigError, match="num_classes"):
        wrong_classes.setup("validate")
    open_dm = ImageDataModule(functools.partial(PatchesDataset, resolution=24, num_val=4))
    open_dm.setup("validate")
    assert (open_dm.resolution, open_dm.channels, open_dm.num_classes) == (24, 3, None)
    with pytest.raises(ConfigError, match="batch_size"):
        _shapes_dm(batch_size=0)


def _first_batches(dm: ImageDataModule, epoch: int, n: int = 2) -> list[dict]:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)  # what Lightning does at every epoch start
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_train_order_is_a_function_of_seed_and_epoch() -> None:
    a, b = _shapes_dm(seed=1), _shapes_dm(seed=1)
    for dm in (a, b):
        dm.setup("fit")
    ba, bb = _first_batches(a, 3), _first_batches(b, 3)
    for x, y in zip(ba, bb):
        assert torch.equal(x["image"], y["image"]) and x["caption"] == y["caption"]
    assert not torch.equal(ba[0]["image"], _first_batches(a, 4)[0]["image"])  # a new epoch, a new order
    c = _shapes_dm(seed=2)
    c.setup("fit")
    assert not torch.equal(ba[0]["image"], _first_batches(c, 3)[0]["image"])
    # "resume": a fresh sampler set to epoch 3 equals one that went through epochs 0..3
    s1 = EpochShuffleSampler(50, seed=5)
    for e in range(4):
        s1.set_epoch(e)
        order = list(s1)
    s2 = EpochShuffleSampler(50, seed=5)
    s2.set_epoch(3)
    assert order == list(s2) and sorted(order) == list(range(50))


def test_sampler_under_lightnings_ddp_wrapper() -> None:
    """Under DDP Lightning wraps a custom sampler in DistributedSamplerWrapper (shuffle=True for training,
    seed PL_GLOBAL_SEED): the ranks get disjoint shards of one permutation, fixed by the seeds and the epoch."""
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    def shards(epoch: int) -> list[list]:
        out = []
        for rank in range(2):
            inner = EpochShuffleSampler(10, seed=0, epoch_keys=True)
            wrapper = DistributedSamplerWrapper(inner, num_replicas=2, rank=rank, shuffle=True, seed=0)
            wrapper.set_epoch(epoch)
            assert inner.epoch == epoch  # forwarded to our sampler
            out.append(list(wrapper))
        return out

    s = shards(2)
    assert sorted(s[0] + s[1]) == [(i, 2) for i in range(10)] and not set(s[0]) & set(s[1])
    assert shards(2) == s and shards(3) != s


def test_workers_do_not_change_the_data() -> None:
    """Augmentations are keyed by (index, epoch): 0 or 2 workers give identical batches."""
    batches = []
    for workers in (0, 2):
        dm = ImageDataModule(
            functools.partial(PatchesDataset, resolution=8, num_train=16, num_val=4, scale_jitter=0.2),
            batch_size=4,
            num_workers=workers,
            seed=3,
        )
        dm.setup("fit")
        batches.append(_first_batches(dm, 1, n=3))
    for x, y in zip(*batches):
        assert torch.equal(x["image"], y["image"])


def test_fixed_batch() -> None:
    dm = _shapes_dm()
    b1, b2 = dm.fixed_batch(5), dm.fixed_batch(5)
    assert b1["image"].shape == (5, 3, 16, 16) and b1["mask"].shape == (5, 16, 16) and len(b1["caption"]) == 5
    assert torch.equal(b1["image"], b2["image"])
    assert torch.equal(b1["image"][0], dm.dataset("val")[0]["image"])
    assert dm.fixed_batch(3, split="train")["label"].shape == (3,)
    with pytest.raises(ConfigError, match="12"):
        dm.fixed_batch(13)


def _compose(name: str, *overrides: str):
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF / "data"), version_base="1.3"):
        cfg = compose(config_name=name, overrides=list(overrides))
    # as in the full config: the node lives at `data` and may see a top-level `seed`
    from omegaconf import OmegaConf

    return OmegaConf.create({"seed": 11, "data": cfg})


@pytest.mark.parametrize("name", ["digits", "shapes", "patches", "folder"])
def test_hydra_configs_instantiate_and_give_a_batch(name: str, tmp_path: Path) -> None:
    overrides = ["batch_size=4"]
    if name == "folder":
        for i in range(6):
            Image.fromarray(np.full((20, 30, 3), i * 40, np.uint8)).save(tmp_path / f"{i}.png")
        overrides += [f"root={tmp_path}", "resolution=16"]
    cfg = _compose(name, *overrides)
    for key in ("resolution", "channels", "num_classes", "batch_size"):
        assert key in cfg.data  # other configs interpolate ${data.<key>}
    dm = instantiate(cfg.data)
    assert isinstance(dm, ImageDataModule) and dm.seed == 11
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    r, c = cfg.data.resolution, cfg.data.channels
    assert batch["image"].shape == (4, c, r, r) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert dm.num_classes == cfg.data.num_classes
    if cfg.data.num_classes is not None:
        assert batch["label"].shape == (4,) and int(batch["label"].max()) < cfg.data.num_classes


def test_folder_config_needs_a_root() -> None:
    from omegaconf.errors import MissingMandatoryValue

    cfg = _compose("folder")
    with pytest.raises(MissingMandatoryValue):
        instantiate(cfg.data)
