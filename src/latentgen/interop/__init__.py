"""Interoperability with other libraries' model folders (diffusers), through latentgen's own modules only.

- :mod:`latentgen.interop.diffusers_vae`: a diffusers ``AutoencoderKL`` folder as latentgen's first stage, and a
  latentgen KL autoencoder written as one.
- :mod:`latentgen.interop.diffusers_dit`: weight mapping between latentgen's DiT and diffusers'
  ``DiTTransformer2DModel``, both ways.
- :mod:`latentgen.interop.diffusers_unet`: latentgen's UNet as diffusers' ``UNet2DModel`` /
  ``UNet2DConditionModel`` and back.
- :mod:`latentgen.interop.diffusers_scheduler`: the diffusers scheduler config that samples as a latentgen
  sampler does.

``python -m latentgen.export`` uses the VAE, UNet and scheduler mappings.
"""
