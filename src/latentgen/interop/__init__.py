"""Interoperability with other libraries' model folders (diffusers), through latentgen's own modules only.

:mod:`latentgen.interop.diffusers_vae`: a diffusers ``AutoencoderKL`` folder as latentgen's first stage, and a
latentgen KL autoencoder written as one.
"""
