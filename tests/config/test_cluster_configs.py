"""Cluster configs: DDP trainers, SLURM through submitit, FSDP; SLURM detected from its environment."""

from __future__ import annotations

import os

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from latentgen.config import register_resolvers
from tests.helpers import CONF, compose_config

SLURM_ENV = {
    "SLURM_NTASKS": "8",
    "SLURM_NTASKS_PER_NODE": "4",
    "SLURM_JOB_NAME": "latentgen",
    "SLURM_JOB_ID": "4242",
    "SLURM_PROCID": "5",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_NODELIST": "gpu[17-18]",
}


@pytest.fixture
def compose_with_hydra():
    """Compose with the hydra node and make it current, as in a running job (${hydra:...} resolves)."""

    def compose_(overrides: list[str]):
        register_resolvers()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield compose_
    HydraConfig.instance().cfg = None  # no Hydra job outside this test


def test_slurm_launcher_and_trainer_compose(compose_with_hydra):
    cfg = compose_with_hydra(
        [
            "hydra/launcher=slurm",
            "trainer=slurm",
            "trainer.num_nodes=2",
            "trainer.devices=4",
            "hydra.launcher.partition=gpu",
            "ckpt_path=auto",
        ]
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.nodes == 2 and launcher.tasks_per_node == 4 and launcher.gpus_per_node == 4
    assert launcher.signal_delay_s >= 120 and launcher.max_num_timeout > 0
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert trainer["devices"] == 4 and trainer["num_nodes"] == 2
    assert trainer["strategy"] == "ddp_find_unused_parameters_true" and trainer["sync_batchnorm"] is True
    assert cfg.callbacks.preemption.signals == ["SIGUSR2"]


def test_slurm_launcher_composes_with_a_one_process_trainer(compose_with_hydra):
    """A sweep with the default trainer (no trainer.num_nodes) on SLURM: one node, one task; before, the
    launcher's nodes interpolation failed and `-m hydra/launcher=slurm` needed trainer=slurm."""
    cfg = compose_with_hydra(["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["nodes"] == 1 and launcher["tasks_per_node"] == 1 and launcher["gpus_per_node"] is None


@pytest.mark.parametrize("name", ["ddp", "ddp_cpu"])
def test_ddp_trainers(name):
    cfg = compose_config([f"trainer={name}"])
    # The autoencoder's manual G/D steps leave the other network without gradients (DDP raises otherwise).
    assert cfg.trainer.strategy == "ddp_find_unused_parameters_true"
    # torch refuses SyncBatchNorm on CPU modules.
    assert cfg.trainer.sync_batchnorm is (name == "ddp")


@pytest.fixture
def restored_process_state():
    """Building a Trainer inside a (fake) SLURM job changes process-wide state: Lightning writes
    MASTER_ADDR/MASTER_PORT into os.environ (monkeypatch only undoes what it set itself) and sets
    ``rank_zero_only.rank`` to the SLURM rank (5), which would silence every rank-zero-only write of
    later tests in this process. Put both back exactly."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    saved_env, saved_rank = dict(os.environ), getattr(rank_zero_only, "rank", 0)
    yield
    os.environ.clear()
    os.environ.update(saved_env)
    rank_zero_only.rank = saved_rank


def test_slurm_environment_is_detected_and_gives_the_ranks(monkeypatch, restored_process_state):
    import lightning as L
    from lightning.fabric.plugins.environments import SLURMEnvironment

    for k, v in SLURM_ENV.items():
        monkeypatch.setenv(k, v)
    for k in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert SLURMEnvironment.detect()
    cfg = compose_config(["trainer=ddp_cpu", "trainer.devices=4", "+trainer.num_nodes=2", "logger=none"])
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if k != "_target_"}
    trainer = L.Trainer(**{**kwargs, "default_root_dir": "/tmp/latentgen-slurm-test"})
    env = trainer._accelerator_connector.cluster_environment
    assert isinstance(env, SLURMEnvironment) and env.creates_processes_externally  # SLURM starts the processes
    assert (trainer.world_size, trainer.global_rank, trainer.local_rank, trainer.node_rank) == (8, 5, 1, 1)
    assert env.main_address == "gpu17"


def test_inside_slurm_the_trainer_has_one_preemption_mechanism(monkeypatch, restored_process_state, tmp_path):
    """In a SLURM job Lightning's auto-requeue (SIGUSR1: an hpc_ckpt written inside the signal handler, resumed
    without ckpt_path in a new W&B run) is off; latentgen's PreemptionCheckpoint and ckpt_path=auto requeue."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    from latentgen.app.building import build_trainer

    for k, v in {**SLURM_ENV, "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": "0"}.items():
        monkeypatch.setenv(k, v)
    for k in ("SLURM_LOCALID", "SLURM_NODEID"):
        monkeypatch.setenv(k, "0")
    cfg = compose_config(["logger=none"], output_dir=str(tmp_path))
    trainer = build_trainer(cfg, trainer_cfg=cfg.trainer, logger=None)
    env = trainer._accelerator_connector.cluster_environment
    assert isinstance(env, SLURMEnvironment) and env.auto_requeue is False
    assert any(type(cb).__name__ == "PreemptionCheckpoint" for cb in trainer.callbacks)
    for k in list(os.environ):
        if k.startswith("SLURM_"):
            monkeypatch.delenv(k)
    trainer = build_trainer(cfg, trainer_cfg=cfg.trainer, logger=None)  # outside SLURM: Lightning's own choice
    assert not isinstance(trainer._accelerator_connector.cluster_environment, SLURMEnvironment)


def test_slurm_job_named_bash_is_an_interactive_session(monkeypatch):
    from lightning.fabric.plugins.environments import SLURMEnvironment

    for k, v in {**SLURM_ENV, "SLURM_JOB_NAME": "bash"}.items():
        monkeypatch.setenv(k, v)
    assert not SLURMEnvironment.detect()


@pytest.mark.parametrize(
    "strategy", ["fsdp", "deepspeed_stage_2", {"_target_": "lightning.pytorch.strategies.FSDPStrategy"}]
)
def test_sharded_strategies_are_refused_before_training(strategy):
    """trainer=fsdp has never run with latentgen's systems (EMA sharded like the live model, grids on rank 0
    outside any collective): the root refuses it with an explanation instead of advertising it."""
    from omegaconf import OmegaConf

    from latentgen.app.building import check_strategy
    from latentgen.errors import ConfigError

    with pytest.raises(ConfigError, match="not supported yet.*trainer=ddp"):
        check_strategy(OmegaConf.create({"strategy": strategy}))
    with pytest.raises(ConfigError, match="not supported yet"):
        check_strategy(compose_config(["trainer=fsdp"]).trainer)
    check_strategy(compose_config(["trainer=ddp"]).trainer)  # DDP (proven by the gloo tests) passes
