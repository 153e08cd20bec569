"""Composition roots: the only code that turns a config into a run.

- :mod:`latentgen.app.training`: ``train(cfg)``, a run as explicit stages (first stage, latent statistics,
  latent cache, latent model);
- :mod:`latentgen.app.evaluation`: ``evaluate(cfg)``, a checkpoint rebuilt from its own config and measured;
- :mod:`latentgen.app.building`: what both roots build: trainers, loggers, systems from a config or a checkpoint.

Nothing below this package imports it (docs/architecture.md, "Layers").
"""
