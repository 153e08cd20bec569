"""Numbers of a run are checked when the config is read, before anything trains: a bad learning rate, betas,
EMA decay, guidance scale or batch size is a ConfigError naming the key, even when the first stage would
otherwise be trained first (minutes) and torch would then fail with a bare ``Invalid learning rate``."""

from __future__ import annotations

import pytest

from latentgen.app import training
from latentgen.errors import ConfigError
from tests.helpers import FAST, TINY_AE, TINY_DATA, TINY_LDM, compose_config

LATENT_RUN = FAST + TINY_DATA + TINY_AE + TINY_LDM + ["first_stage.ckpt=null"]
AE_RUN = FAST + TINY_DATA + TINY_AE + ["model=autoencoder"]
STUDENT_RUN = FAST + TINY_DATA + ["model=reflow", "teacher.ckpt=/nonexistent/teacher.ckpt"]


@pytest.fixture
def nothing_trains(monkeypatch):
    """Any training would be a failure of the check: it must come first."""

    def must_not_train(*args, **kwargs):
        raise AssertionError("training started before the config was checked")

    monkeypatch.setattr(training, "fit", must_not_train)
    monkeypatch.setattr(training, "train_first_stage", must_not_train)
    monkeypatch.setattr(training, "train_student", must_not_train)


@pytest.mark.parametrize(
    "run, override, key",
    [
        (LATENT_RUN, "model.optimizer.lr=-1", "model.optimizer.lr=-1"),
        (LATENT_RUN, "model.optimizer.lr=nan", "model.optimizer.lr=nan"),
        (LATENT_RUN, "model.optimizer.betas=[0.9,1.5]", "model.optimizer.betas"),
        (LATENT_RUN, "model.ema_decay=1.5", "model.ema_decay=1.5"),
        (LATENT_RUN, "first_stage.model.learning_rate=-1e-3", "first_stage.model.learning_rate=-0.001"),
        (LATENT_RUN, "guidance.scale=-2", "guidance.scale=-2"),
        (LATENT_RUN, "data.batch_size=0", "data.batch_size=0"),
        (AE_RUN, "model.learning_rate=-1", "model.learning_rate=-1"),
        (AE_RUN, "model.learning_rate=inf", "model.learning_rate=inf"),
        (AE_RUN, "model.betas=[0.5]", "model.betas"),
        (STUDENT_RUN, "model.optimizer.lr=-1", "model.optimizer.lr=-1"),
        (STUDENT_RUN, "model.ema_decay=2", "model.ema_decay=2"),
    ],
)
def test_a_bad_number_is_refused_before_any_training_naming_the_key(tmp_path, nothing_trains, run, override, key):
    cfg = compose_config(run + [override], output_dir=str(tmp_path))
    with pytest.raises(ConfigError) as e:
        training.train(cfg)
    assert key in str(e.value) and "must be" in str(e.value)


def test_good_numbers_pass_the_check(tmp_path):
    from latentgen.app.run_checks import check_run_config

    for run in (LATENT_RUN, AE_RUN):
        check_run_config(compose_config(run, output_dir=str(tmp_path)))
