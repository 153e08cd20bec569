"""In-process resilience: exact resume after a crash, atomic checkpoints, non-finite losses,
checkpoint retention, output dirs that cannot be written, data position and per-sample noise.

(The real CLI with ``kill -9``, SIGTERM and 2-process DDP is in tests/e2e/test_resume.py.)
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch

import latentgen.checkpoint as ckpt_mod
from latentgen.callbacks.step_log import read_step_log
from latentgen.checkpoint import AtomicCheckpointIO, atomic_torch_save, load_checkpoint_file, read_latentgen_checkpoint
from latentgen.data.resumable_loader import ResumableDataLoader
from latentgen.data.sampling import EpochShuffleSampler
from latentgen.errors import ConfigError, NonFiniteLossError
from latentgen.app.building import check_output_dir
from latentgen.app.training import train
from tests.helpers import FAST, compose_config

# 36 training images in batches of 8: 4 batches per epoch, so 10 steps cross two epoch boundaries.
SMALL = [
    *FAST,
    "data=shapes",
    "data.dataset.num_train=36",
    "data.dataset.num_val=8",
    "data.batch_size=8",
    "data.resolution=16",
    "trainer.limit_val_batches=1",
    "trainer.val_check_interval=4",
    "num_grid_samples=4",
    "sample_every_n_steps=1000",
    "callbacks.model_checkpoint.every_n_train_steps=3",
    "+callbacks.step_log._target_=latentgen.callbacks.step_log.StepMetricsLog",
]
AE = [
    *SMALL,
    "model=autoencoder",
    "autoencoder=kl_f4_tiny",
    "discriminator=patchgan_tiny",
    "perceptual=none",
    "ae_loss.disc_train_start=3",
    "ae_loss.disc_start=5",
    "trainer.max_steps=10",
]


class Crash(RuntimeError):
    pass


class CrashAtBatch(L.Callback):
    """Raise after batch ``batch`` trained, before that batch's checkpoint (checkpoint callbacks run last)."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.fit_loop.total_batch_idx == self.batch:
            raise Crash(f"simulated crash after batch {self.batch}")


def _state(path: Path) -> dict[str, torch.Tensor]:
    return read_latentgen_checkpoint(path)["state_dict"]


def _crash_then_resume(overrides: list[str], out: Path, crash_batch: int) -> None:
    crash = f"+callbacks.crash._target_={__name__}.CrashAtBatch"
    with pytest.raises(Crash):
        train(compose_config([*overrides, crash, f"+callbacks.crash.batch={crash_batch}"], output_dir=str(out)))
    assert (out / "checkpoints" / "last.ckpt").is_file()
    train(compose_config([*overrides, "ckpt_path=last"], output_dir=str(out)))


def test_autoencoder_resume_after_a_crash_is_exact(tmp_path):
    """GAN schedule (D warm-up at batch 3, GAN term at 5), Adam states, the KL sampling RNG and the data
    position (mid-epoch, then across epochs) all continue as in an uninterrupted run."""
    ref, crashed = tmp_path / "ref", tmp_path / "crashed"
    train(compose_config(AE, output_dir=str(ref)))
    _crash_then_resume(AE, crashed, crash_batch=4)  # last checkpoint at step 3: batches 3, 4 run twice

    a, b = read_step_log(ref / "train_steps.jsonl"), read_step_log(crashed / "train_steps.jsonl")
    assert sorted(a) == sorted(b) == list(range(10))
    for batch in a:
        for key in ("train/loss", "train/disc_loss", "train/g", "train/disc_factor"):
            assert a[batch].get(key) == b[batch].get(key), (batch, key)
    assert a[6]["train/disc_factor"] == 1.0 and a[4]["train/disc_factor"] == 0.0
    sa, sb = _state(ref / "checkpoints" / "last.ckpt"), _state(crashed / "checkpoints" / "last.ckpt")
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_step_checkpoints_keep_the_newest_k(tmp_path):
    cfg = compose_config(
        [
            *AE,
            "trainer.max_steps=7",
            "callbacks.model_checkpoint.every_n_train_steps=1",
            "callbacks.model_checkpoint.save_top_k=2",
            "~callbacks.step_log",
        ],
        output_dir=str(tmp_path),
    )
    train(cfg)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step*.ckpt"))
    assert names == ["step0000006.ckpt", "step0000007.ckpt"]


def test_step_checkpoints_keep_the_best_by_a_metric(tmp_path):
    cfg = compose_config(
        [
            *AE,
            "trainer.max_steps=8",
            "trainer.val_check_interval=2",
            "callbacks.model_checkpoint.every_n_train_steps=null",
            "callbacks.model_checkpoint.monitor=val/psnr",
            "callbacks.model_checkpoint.mode=max",
            "callbacks.model_checkpoint.save_top_k=1",
            "~callbacks.step_log",
        ],
        output_dir=str(tmp_path),
    )
    train(cfg)
    kept = list((tmp_path / "checkpoints").glob("step*.ckpt"))
    assert len(kept) == 1
    best = load_checkpoint_file(kept[0])
    mc = next(v for k, v in best["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert mc["monitor"] == "val/psnr" and float(mc["best_model_score"]) > 0


# ---------------------------------------------------------------------------------------------- atomic writes
def test_a_crash_while_writing_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    atomic_torch_save({"state_dict": {"w": torch.ones(3)}, "step": 1}, path)
    real_save = torch.save

    def save_then_fail(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # the bytes are on their way ...
        f.write(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")  # ... and the disk fills up

    monkeypatch.setattr(ckpt_mod.torch, "save", save_then_fail)
    for write in (
        lambda: atomic_torch_save({"step": 2}, path),
        lambda: AtomicCheckpointIO().save_checkpoint({"step": 2}, path),
    ):
        with pytest.raises(OSError, match="No space left"):
            write()
        old = load_checkpoint_file(path)
        assert old["step"] == 1 and torch.equal(old["state_dict"]["w"], torch.ones(3))
        assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind


# ---------------------------------------------------------------------------------------------- output dirs
def test_an_output_dir_that_cannot_be_created_is_a_clear_error_at_start_up(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="not writable"):
        check_output_dir(blocker / "run")
    with pytest.raises(ConfigError, match="not writable"):
        train(compose_config(AE, output_dir=str(blocker / "run")))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_output_dir_is_a_clear_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match="not writable"):
            check_output_dir(ro / "run")
    finally:
        ro.chmod(0o755)


def test_a_full_disk_is_a_clear_error_at_start_up(tmp_path, monkeypatch):
    import latentgen.files

    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, fd, mode):
            self.f = real_fdopen(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(latentgen.files.os, "fdopen", FullDisk)
    with pytest.raises(ConfigError, match="No space left on device"):
        check_output_dir(tmp_path / "run")
    monkeypatch.undo()
    assert list((tmp_path / "run").iterdir()) == []  # the probe file is gone


def _check_output_dir_often(path: Path, times: int, errors) -> None:
    try:
        for _ in range(times):
            check_output_dir(path)
        errors.put(None)
    except Exception as e:  # noqa: BLE001 - reported to the parent
        errors.put(repr(e))


def test_ranks_starting_together_in_one_run_dir_do_not_break_each_others_probe(tmp_path):
    """Regression: ``torchrun ... evaluate.py hydra.run.dir=D`` starts every rank in D. The probe had one
    fixed name, so rank 0 could delete rank 1's probe before rank 1 did ('not writable: No such file'),
    rank 1 left the process group and rank 0 failed in its first all-reduce (a flaky CI failure).
    Two processes probing one directory 2,000 times each hit that race on every try before the fix."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    procs = [ctx.Process(target=_check_output_dir_often, args=(tmp_path / "run", 2000, errors)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [errors.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert results == [None, None]
    assert list((tmp_path / "run").iterdir()) == []


# ---------------------------------------------------------------------------------------------- NaN / Inf
def _nan_at_step(monkeypatch, step: int) -> None:
    """Make the autoencoder loss NaN once: in the first training batch where global_step == step."""
    from latentgen.autoencoders.losses import AutoencoderLoss

    real = AutoencoderLoss.generator_loss
    done = []

    def generator_loss(self, *args, batch_idx, **kwargs):
        total, log = real(self, *args, batch_idx=batch_idx, **kwargs)
        if batch_idx == step and self.training and not done:
            done.append(True)
            total = total * float("nan")
        return total, log

    monkeypatch.setattr(AutoencoderLoss, "generator_loss", generator_loss)


def test_a_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    _nan_at_step(monkeypatch, 4)
    cfg = compose_config([*AE, "~callbacks.step_log"], output_dir=str(tmp_path))
    with pytest.raises(NonFiniteLossError, match="global step 4"):
        train(cfg)
    last = read_latentgen_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_nonfinite_skip_skips_the_step_and_trains_on(tmp_path, monkeypatch):
    _nan_at_step(monkeypatch, 4)
    cfg = compose_config([*AE, "nonfinite=skip"], output_dir=str(tmp_path))
    metrics = train(cfg)
    rows = read_step_log(tmp_path / "train_steps.jsonl")
    assert metrics["global_step"] == 10  # the skipped batch made no step: one more batch was trained
    assert max(rows) == 10 and rows[4]["train/skipped_steps"] == 1.0
    assert rows[4]["step"] == rows[3]["step"] == 4  # no update in the skipped batch
    last = read_latentgen_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_nonfinite_policy_is_checked():
    from latentgen.systems.common import check_nonfinite_policy

    with pytest.raises(ConfigError, match="nonfinite='ignore'"):
        check_nonfinite_policy("ignore")


# ---------------------------------------------------------------------------------------------- data position
def test_ranks_hold_contiguous_slices_of_the_one_process_global_batches():
    one = list(EpochShuffleSampler(37, seed=3, batch_size=8, drop_last=True))
    ranks = [
        list(EpochShuffleSampler(37, seed=3, num_replicas=2, rank=r, batch_size=4, drop_last=True)) for r in (0, 1)
    ]
    assert len(one) == 32 and all(len(r) == 16 for r in ranks)
    for step in range(4):
        assert one[step * 8 : step * 8 + 8] == ranks[0][step * 4 : step * 4 + 4] + ranks[1][step * 4 : step * 4 + 4]
    # Without drop_last the partial global batch is padded to a multiple of the world size and split evenly.
    tails = [list(EpochShuffleSampler(37, seed=3, num_replicas=2, rank=r, batch_size=4)) for r in (0, 1)]
    assert [len(t) for t in tails] == [19, 19] and len(list(EpochShuffleSampler(37, seed=3, batch_size=8))) == 37


def test_the_train_loader_resumes_at_its_position_also_with_another_world_size():
    data = list(range(40))

    def loader(world=1, rank=0, per_rank=8):
        sampler = EpochShuffleSampler(40, 0, num_replicas=world, rank=rank, batch_size=per_rank, drop_last=True)
        return ResumableDataLoader(data, batch_size=per_rank, sampler=sampler)

    full = loader()
    full.sampler.set_epoch(2)
    batches = [b.tolist() for b in full]
    first = loader()
    first.sampler.set_epoch(2)
    it = iter(first)
    seen = [next(it).tolist() for _ in range(2)]
    state = first.state_dict()
    assert state == {"epoch": 2, "samples": 16, "global_batch_size": 8} and seen == batches[:2]
    again = loader()
    again.load_state_dict(state)
    assert [b.tolist() for b in again] == batches[2:]
    # Two ranks of 4 continue with the same global batches.
    halves = []
    for r in (0, 1):
        dl = loader(world=2, rank=r, per_rank=4)
        dl.load_state_dict(state)
        halves.append([b.tolist() for b in dl])
    assert [h0 + h1 for h0, h1 in zip(*halves)] == batches[2:]
    # A checkpoint written after the last batch of an epoch continues with the next epoch.
    end = loader()
    end.load_state_dict({"epoch": 2, "samples": 40, "global_batch_size": 8})
    assert end.sampler.epoch == 3 and end.sampler.start_batch == 0


# ---------------------------------------------------------------------------------------------- noise
def test_per_sample_noise_does_not_depend_on_the_split_over_ranks():
    from latentgen.generative.time_samplers import LogitNormalTime
    from latentgen.randomness import BatchRandomness

    def draws(rank: int, world: int, batch: int, step: int = 3) -> list[torch.Tensor]:
        rng = BatchRandomness.for_step(7, step, batch, rank=rank, world_size=world)
        u = rng.rand()  # (B,)
        t = rng.draw(lambda n, g, d: LogitNormalTime().sample(n, d, g))  # (B,)
        eps = rng.randn(4, 8, 8)  # (B, 4, 8, 8)
        masks = rng.substream("masks").rand(3)  # (B, 3)
        return [u, t, eps, masks]

    whole = draws(0, 1, 8)
    parts = [draws(r, 2, 4) for r in (0, 1)]
    for i, w in enumerate(whole):
        assert torch.equal(w, torch.cat([p[i] for p in parts])), i
    assert not torch.equal(whole[2], draws(0, 1, 8, step=4)[2])


# ---------------------------------------------------------------------------------------------- pre-emption
class SignalAtBatch(L.Callback):
    def __init__(self, batch: int, signum: str = "SIGUSR2") -> None:
        self.batch, self.signum = batch, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.fit_loop.total_batch_idx == self.batch:
            os.kill(os.getpid(), getattr(signal, self.signum))


def test_a_requeue_signal_saves_at_the_next_batch_boundary_then_hands_over(tmp_path):
    """The SLURM/submitit recipe: SIGUSR2 -> last.ckpt at the end of the next batch -> the handler
    installed before (submitit's requeue) is called -> the run stops with exit code 143. The batch it stops
    after has ended completely: the callbacks after the pre-emption callback (here the step log) saw it
    too (before, they did not, and that batch's loss row was missing from train_steps.jsonl)."""
    from latentgen.callbacks.preemption import PREEMPTED_EXIT_CODE

    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        cfg = compose_config(
            [
                *AE,
                f"+callbacks.signal._target_={__name__}.SignalAtBatch",
                "+callbacks.signal.batch=3",
            ],
            output_dir=str(tmp_path),
        )
        with pytest.raises(SystemExit) as stop:
            train(cfg)
        assert stop.value.code == PREEMPTED_EXIT_CODE
        assert calls == [signal.SIGUSR2]  # handed over once, after the checkpoint
        assert read_latentgen_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 5
        assert sorted(read_step_log(tmp_path / "train_steps.jsonl")) == [0, 1, 2, 3, 4]  # stopped after batch 4
        assert not (tmp_path / "metrics.json").exists()  # the run did not carry on to its final validation
        assert signal.getsignal(signal.SIGUSR2) is not None and signal.getsignal(signal.SIGUSR2) != signal.SIG_DFL
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_nonfinite_skip_in_the_latent_model_skips_the_update_and_its_ema_step(tmp_path, monkeypatch):
    """Automatic optimization: training_step returns None, Lightning skips backward and the step."""
    from latentgen.generative.objective import Objective
    from tests.helpers import make_first_stage_export

    export = make_first_stage_export(tmp_path / "fs", ["data=shapes", "data.resolution=16", "autoencoder=kl_f4_tiny"])
    real, calls = Objective.loss, []

    def loss(self, *args, **kwargs):
        total, log = real(self, *args, **kwargs)
        if torch.is_grad_enabled():  # training, not validation
            calls.append(1)
            if len(calls) == 3:
                total = total * float("nan")
        return total, log

    monkeypatch.setattr(Objective, "loss", loss)
    overrides = [
        *SMALL,
        "autoencoder=kl_f4_tiny",
        "denoiser=unet_tiny",
        "sampler.steps=2",
        "trainer.max_steps=5",
        f"first_stage.ckpt={export}",
        "nonfinite=skip",
    ]
    train(compose_config(overrides, output_dir=str(tmp_path / "run")))
    rows = read_step_log(tmp_path / "run" / "train_steps.jsonl")
    assert rows[2]["train/skipped_steps"] == 1.0
    last = read_latentgen_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    state = last["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert int(state["ema.num_updates"]) == last["global_step"] - 1  # no EMA update for the skipped step
