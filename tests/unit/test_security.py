"""Security: safe loading of checkpoints and caches, configs from checkpoints build only our own targets.

(That no W&B key reaches a file of the run dir is checked on a real CLI run in tests/e2e/test_resume.py; a
crafted checkpoint given to evaluate.py in tests/e2e/test_checkpoint_security.py.)
"""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest
import torch

from latentgen.checkpoint import CONFIG_KEY, KIND_KEY, atomic_torch_save, load_checkpoint_file
from latentgen.errors import CheckpointError, ConfigError
from latentgen.config import check_targets
from latentgen.app.building import load_system_from_checkpoint

SRC = Path(__file__).resolve().parents[2] / "src" / "latentgen"


def test_every_torch_load_in_src_uses_weights_only_true():
    calls = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                if isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                    kw = {k.arg: k.value for k in node.keywords}
                    safe = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                    calls.append((f"{path.relative_to(SRC)}:{node.lineno}", safe))
    assert calls, "no torch.load found: the test looks in the wrong place"
    assert [where for where, safe in calls if not safe] == []


class _Payload:
    """Unpickling this object opens (creates) the marker file: code execution on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def _crafted_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 0, "payload": _Payload(marker)}, path)
    # The pickle really executes code when loaded unsafely (proves the test would notice).
    torch.load(path, weights_only=False)  # noqa: S614 - deliberately unsafe, on our own crafted file
    assert marker.exists()
    marker.unlink()
    return path, marker


def test_a_crafted_pickle_is_refused_by_the_checkpoint_loader(tmp_path):
    path, marker = _crafted_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint_file(path)
    assert not marker.exists()


def test_a_crafted_pickle_is_refused_when_resuming_a_run(tmp_path):
    from latentgen.app.training import train
    from tests.helpers import FAST, compose_config

    path, marker = _crafted_checkpoint(tmp_path)
    cfg = compose_config(
        [
            *FAST,
            "model=autoencoder",
            "autoencoder=kl_f4_tiny",
            "discriminator=patchgan_tiny",
            "perceptual=none",
            "data=shapes",
            "data.dataset.num_train=16",
            "data.dataset.num_val=8",
            "data.batch_size=8",
            "data.resolution=16",
            "trainer.max_steps=2",
            f"ckpt_path={path}",
        ],
        output_dir=str(tmp_path / "run"),
    )
    with pytest.raises(CheckpointError, match="crafted.ckpt"):
        train(cfg)
    assert not marker.exists()


def test_a_crafted_latent_cache_is_refused(tmp_path):
    from latentgen.data import latent_cache as lc

    first_stage, data_cfg = torch.nn.Linear(2, 2), {"name": "crafted"}
    path, marker = _crafted_checkpoint(tmp_path)
    cache_file = (
        tmp_path / "cache" / "latents" / f"train-{lc._key_digest(lc.cache_key(first_stage, data_cfg, 'train'))}.pt"
    )
    cache_file.parent.mkdir(parents=True)
    path.rename(cache_file)  # planted where the run will look for its cache
    with pytest.raises(CheckpointError, match="weights_only=True"):
        lc.load_or_build_latent_cache(first_stage, [], tmp_path / "cache", data_cfg)
    assert not marker.exists()


@pytest.mark.parametrize(
    "target",
    [
        "os.system",
        "subprocess.call",
        "builtins.exec",
        "latentgen.app.training.os.system",  # an allowed prefix, but os.system reached through a module attribute
        "lightning.pytorch.trainer.connectors.signal_connector.call",  # subprocess.call, re-exported
        "torch.nn.modules.module.torch.load",
        "latentgen.does.not.exist",
        "latentgen.files.atomic_write_json",  # latentgen's own code, but a function that writes files
        "latentgen.app.training.train",  # a root: it trains and writes a run
        "torch.utils.tensorboard.SummaryWriter",  # a class outside the component kinds: it creates a log dir
    ],
)
def test_configs_in_checkpoints_may_only_build_our_own_targets(tmp_path, target):
    marker = tmp_path / "pwned"
    config = {
        "model": {
            "_target_": "latentgen.systems.autoencoder.AutoencoderSystem",
            "loss": {"_target_": target, "_args_": [f"touch {marker}"], "path": str(marker), "obj": {}},
        },
        "seed": 0,
    }
    with pytest.raises(ConfigError, match="refused"):
        check_targets(config, "checkpoint config")
    path = tmp_path / "evil.ckpt"
    atomic_torch_save({CONFIG_KEY: config, KIND_KEY: "autoencoder", "state_dict": {}}, path)
    with pytest.raises(ConfigError, match=r"evil\.ckpt': model\.loss\._target_ = '.*' is refused"):
        load_system_from_checkpoint(str(path))
    assert not marker.exists()


def test_every_system_node_of_every_experiment_passes_the_check():
    """What train.py writes into checkpoints must load again: the model/autoencoder/data nodes of the default
    config and of every experiment only name admitted targets."""
    from latentgen.app.building import SYSTEM_NODES
    from omegaconf import OmegaConf

    from latentgen.config import to_container
    from tests.helpers import CONF, compose_config

    experiments = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
    assert "f_sweep" in experiments
    for overrides in [[], ["model=autoencoder"], *[[f"experiment={e}"] for e in experiments]]:
        composed = compose_config(overrides)
        if OmegaConf.select(composed, "data._target_") and OmegaConf.is_missing(composed.data, "root"):
            composed = compose_config([*overrides, "data.root=/data/celebahq"])  # folder data: the user gives it
        cfg = to_container(composed)  # what a checkpoint stores
        for node in SYSTEM_NODES:
            check_targets(cfg[node], f"{overrides}: {node}")
