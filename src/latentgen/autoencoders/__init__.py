"""First stage: Autoencoder = encoder + regularizer (KL | VQ | identity) + decoder.

The losses (``autoencoders.losses``), the discriminator (``autoencoders.discriminator``) and LPIPS
(``autoencoders.perceptual``) are imported by their full module paths.
"""

from latentgen.autoencoders.autoencoder import Autoencoder, AutoencoderOutput
from latentgen.autoencoders.encoder_decoder import Decoder, Encoder, IdentityDecoder, IdentityEncoder
from latentgen.autoencoders.latent_stats import measure_latent_stats
from latentgen.autoencoders.regularizers import (
    IdentityRegularizer,
    KLRegularizer,
    Regularizer,
    RegularizerOutput,
    VectorQuantizer,
)

__all__ = [
    "Autoencoder",
    "AutoencoderOutput",
    "Decoder",
    "Encoder",
    "IdentityDecoder",
    "IdentityEncoder",
    "IdentityRegularizer",
    "KLRegularizer",
    "Regularizer",
    "RegularizerOutput",
    "VectorQuantizer",
    "measure_latent_stats",
]
