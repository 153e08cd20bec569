"""latentgen: latent diffusion and flow-matching experiments on Lightning + Hydra."""

__version__ = "0.1.0"
