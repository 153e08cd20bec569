"""The reflow pair cache: generated once, reused, refused for another key, independent of the rank count."""

from __future__ import annotations

import pytest
import torch

from latentgen.data.reflow_pairs import ReflowPairs, load_or_generate_pairs, pair_cache_key
from latentgen.errors import DataError


def key(**changes):
    base = dict(
        teacher_digest="abc",
        solver="EulerSampler(steps=50, spacing='trailing')",
        steps=None,
        guidance_scale=1.5,
        count=20,
        seed=0,
        latent_shape=(2, 4, 4),
        num_classes=10,
        chunk_size=8,
    )
    return pair_cache_key(**{**base, **changes})


class CountingTeacher:
    """A stand-in for the teacher's solver: a fixed map of the noise that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, noise, labels):
        self.calls += 1
        return 0.5 * noise + labels.reshape(-1, 1, 1, 1).float()


def test_pairs_are_generated_once_and_reused(tmp_path):
    teacher = CountingTeacher()
    pairs = load_or_generate_pairs(tmp_path, key(), teacher, progress=False)
    assert teacher.calls == 3  # 20 pairs in chunks of 8
    assert pairs["noise"].shape == (20, 2, 4, 4) and pairs["label"].shape == (20,)
    torch.testing.assert_close(pairs["latent"], 0.5 * pairs["noise"] + pairs["label"].reshape(-1, 1, 1, 1).float())
    again = load_or_generate_pairs(tmp_path, key(), teacher, progress=False)
    assert teacher.calls == 3  # nothing generated the second time
    for k in pairs:
        assert torch.equal(pairs[k], again[k])
    assert ReflowPairs(again, range(4, 6))[1]["noise"].shape == (2, 4, 4)


@pytest.mark.parametrize(
    "change", [{"teacher_digest": "other"}, {"solver": "HeunSampler(steps=25)"}, {"steps": 10}, {"count": 24}]
)
def test_a_cache_made_for_another_teacher_solver_steps_or_count_is_refused(tmp_path, change):
    load_or_generate_pairs(tmp_path, key(), CountingTeacher(), progress=False)
    with pytest.raises(DataError, match="made for another teacher or solver") as err:
        load_or_generate_pairs(tmp_path, key(**change), CountingTeacher(), progress=False)
    assert next(iter(change)).replace("_digest", "") in str(err.value)


def test_pairs_do_not_depend_on_the_number_of_ranks(tmp_path):
    one = load_or_generate_pairs(tmp_path / "one", key(), CountingTeacher(), progress=False)
    # Two ranks share the chunks (rank 1 writes 1; rank 0 writes 0 and 2 and then reads them all).
    teacher = CountingTeacher()
    folder = tmp_path / "two"
    with pytest.raises(DataError, match="not written"):
        load_or_generate_pairs(folder, key(), teacher, rank=0, world_size=2, progress=False, wait_timeout_s=0.0)
    assert teacher.calls == 2  # chunks 0 and 2; chunk 1 is rank 1's
    load_or_generate_pairs(folder, key(), CountingTeacher(), rank=1, world_size=2, progress=False)
    two = load_or_generate_pairs(folder, key(), teacher, rank=0, world_size=2, progress=False)
    assert teacher.calls == 2
    for k in one:
        assert torch.equal(one[k], two[k])
