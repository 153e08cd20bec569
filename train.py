"""Train a latentgen system. `python train.py --help` lists the config groups; see README.md."""

import hydra
from omegaconf import DictConfig

from latentgen.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from latentgen.app.training import train  # imported here so `--help` and config errors stay fast

    metrics = train(cfg)
    # Returned for Hydra sweepers (e.g. Optuna); the sweep report reads metrics.json instead.
    return metrics.get("val/loss_ema", metrics.get("val/psnr"))


if __name__ == "__main__":
    main()
