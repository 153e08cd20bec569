"""``python -m latentgen.sample ckpt=... num_samples=N out=DIR``: numbered PNGs and samples.json (conf/sample.yaml).

Hydra-style ``key=value`` arguments as ``evaluate.py``; also under ``torchrun ... -m latentgen.sample``. The
config folder is the repository's ``conf/``; the work is done by :func:`latentgen.app.sampling.sample`.
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from latentgen.config import register_resolvers

CONF = Path(__file__).resolve().parents[2] / "conf"

register_resolvers()


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="sample")
def main(cfg: DictConfig) -> None:
    from latentgen.app.sampling import sample  # imported here so `--help` and config errors stay fast

    sample(cfg)


if __name__ == "__main__":
    main()
