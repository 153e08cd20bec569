"""Interoperability with other libraries' model folders (diffusers), through latentgen's own modules only.

- :mod:`latentgen.interop.diffusers_vae`: a diffusers ``AutoencoderKL`` folder as latentgen's first stage, and a
  latentgen KL autoencoder written as one.
- :mod:`latentgen.interop.diffusers_dit`: weight mapping between latentgen's DiT and diffusers'
  ``DiTTransformer2DModel``, both ways.
"""
