"""Security through the real command line: ``python evaluate.py ckpt=<file>`` on a crafted checkpoint."""

from __future__ import annotations

from latentgen.checkpoint import CONFIG_KEY, KIND_KEY, atomic_torch_save
from tests.helpers import run_cli


def test_a_checkpoint_whose_config_writes_a_file_does_nothing_through_evaluate_py(tmp_path):
    """Issue 13.1 as a user meets it: `python evaluate.py ckpt=<file>` on a checkpoint whose stored config nests
    a file-writing latentgen function inside a valid system node. Nothing is written; the error names the key."""
    marker = tmp_path / "written-by-checkpoint.json"
    config = {
        "model": {
            "_target_": "latentgen.systems.autoencoder.AutoencoderSystem",
            "autoencoder": {
                "_target_": "latentgen.files.atomic_write_json",
                "path": str(marker),
                "obj": {"x": 1},
            },
        },
        "data": {"_target_": "latentgen.data.ImageDataModule"},
        "seed": 0,
    }
    path = tmp_path / "crafted.ckpt"
    atomic_torch_save({CONFIG_KEY: config, KIND_KEY: "autoencoder", "state_dict": {}}, path)
    out = run_cli(["evaluate.py", f"ckpt={path}", f"hydra.run.dir={tmp_path / 'eval'}", "logger=none"], tmp_path)
    assert out.returncode != 0
    assert "model.autoencoder._target_ = 'latentgen.files.atomic_write_json' is refused" in out.stderr + out.stdout
    assert not marker.exists()
