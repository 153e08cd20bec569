"""Checkpoints written before a class moved still load: their stored `_target_` is renamed to today's path
(exact known strings only) before the allow-list check, and every new path is admitted."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from latentgen.app.building import MOVED_TARGETS, rename_moved_targets
from latentgen.config import check_targets


@pytest.mark.parametrize("old, new", sorted(MOVED_TARGETS.items()))
def test_a_stored_target_of_a_moved_class_is_renamed_and_admitted(old, new):
    stored = OmegaConf.create(
        {"model": {"conditioner": {"_target_": old, "drop_prob": 0.1}}, "other": [{"_target_": old}]}
    )
    rename_moved_targets(stored)
    assert stored.model.conditioner._target_ == new and stored.other[0]._target_ == new
    check_targets(stored.model, "test")  # admitted: importable and a Conditioner


def test_other_targets_are_left_alone():
    stored = OmegaConf.create({"a": {"_target_": "latentgen.conditioning.concat.Something"}, "b": "${a}"})
    rename_moved_targets(stored)
    assert stored.a._target_ == "latentgen.conditioning.concat.Something"
