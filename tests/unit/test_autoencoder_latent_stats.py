"""measure_latent_stats: 1/std in float64 over several batches, optional centering.

(The all-reduce over ranks runs in two processes: tests/integration/test_autoencoder_ddp.py.)
"""

from __future__ import annotations

import pytest
import torch

from latentgen.autoencoders import (
    Autoencoder,
    Decoder,
    Encoder,
    KLRegularizer,
    measure_latent_stats,
)
from latentgen.errors import DataError
from tests.helpers import identity_autoencoder, image_batches


def test_scale_is_one_over_std_of_all_batches():
    batches = image_batches(0)
    data = torch.cat([b["image"] for b in batches]).double()
    scale, shift = measure_latent_stats(identity_autoencoder(), batches, num_batches=3)
    assert scale == pytest.approx(1.0 / data.std().item(), rel=1e-10) and shift == 0.0
    scale_c, shift_c = measure_latent_stats(identity_autoencoder(), batches, num_batches=3, center=True)
    assert scale_c == pytest.approx(scale, rel=1e-12) and shift_c == pytest.approx(data.mean().item(), rel=1e-10)
    # only the first num_batches are read; tensors work as batches too
    first = measure_latent_stats(identity_autoencoder(), [b["image"] for b in batches], num_batches=1)[0]
    assert first == pytest.approx(1.0 / batches[0]["image"].double().std().item(), rel=1e-10)
    assert measure_latent_stats(identity_autoencoder(), batches, 3, rescale=False) == (1.0, 0.0)


def test_scaled_latents_have_unit_std():
    ae = identity_autoencoder()
    batches = image_batches(1, loc=-1.0, std=0.2)
    ae.set_latent_stats(*measure_latent_stats(ae, batches, 3, center=True))
    z = torch.cat([ae.encode_scaled(b["image"]) for b in batches])
    assert z.std().item() == pytest.approx(1.0, rel=1e-5) and abs(z.mean().item()) < 1e-5


def test_kl_uses_posterior_samples_and_restores_mode():
    net = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, resolution=8)
    ae = Autoencoder(Encoder(2, out_channels=4, **net), KLRegularizer(), Decoder(2, in_channels=2, **net), 2, 2)
    with torch.no_grad():
        ae.quant_conv.bias[2:] += 3.0  # a large posterior variance, so samples and means differ clearly
    ae.train()
    batches = image_batches(2)
    s_sample = measure_latent_stats(ae, batches, 3, generator=torch.Generator().manual_seed(0))[0]
    s_mean = measure_latent_stats(ae, batches, 3, sample=False)[0]
    assert ae.training
    assert s_sample < s_mean  # samples have the posterior variance on top of the means'


def test_errors():
    with pytest.raises(DataError):
        measure_latent_stats(identity_autoencoder(), [], num_batches=1)
    with pytest.raises(DataError, match="constant"):
        measure_latent_stats(identity_autoencoder(), [torch.ones(2, 2, 4, 4)], num_batches=1)
