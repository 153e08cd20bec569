"""Evaluate a checkpoint: `python evaluate.py ckpt=outputs/.../checkpoints/last.ckpt`; see README.md."""

import hydra
from omegaconf import DictConfig

from latentgen.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from latentgen.app.evaluation import evaluate  # imported here so `--help` and config errors stay fast

    evaluate(cfg)


if __name__ == "__main__":
    main()
