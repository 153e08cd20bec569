"""measure_latent_stats: 1/std in float64 over several batches, optional centering, all-reduce over ranks."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from latentgen.autoencoders import (
    Autoencoder,
    Decoder,
    Encoder,
    IdentityDecoder,
    IdentityEncoder,
    IdentityRegularizer,
    KLRegularizer,
    measure_latent_stats,
)
from latentgen.errors import DataError


def _identity_ae() -> Autoencoder:
    return Autoencoder(IdentityEncoder(2), IdentityRegularizer(), IdentityDecoder(2), 1, 2, quant_conv=False)


def _batches(seed: int, n: int = 3, loc: float = 3.0, std: float = 2.0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"image": loc + std * torch.randn(4, 2, 8, 8, generator=g)} for _ in range(n)]


def test_scale_is_one_over_std_of_all_batches():
    batches = _batches(0)
    data = torch.cat([b["image"] for b in batches]).double()
    scale, shift = measure_latent_stats(_identity_ae(), batches, num_batches=3)
    assert scale == pytest.approx(1.0 / data.std().item(), rel=1e-10) and shift == 0.0
    scale_c, shift_c = measure_latent_stats(_identity_ae(), batches, num_batches=3, center=True)
    assert scale_c == pytest.approx(scale, rel=1e-12) and shift_c == pytest.approx(data.mean().item(), rel=1e-10)
    # only the first num_batches are read; tensors work as batches too
    first = measure_latent_stats(_identity_ae(), [b["image"] for b in batches], num_batches=1)[0]
    assert first == pytest.approx(1.0 / batches[0]["image"].double().std().item(), rel=1e-10)
    assert measure_latent_stats(_identity_ae(), batches, 3, rescale=False) == (1.0, 0.0)


def test_scaled_latents_have_unit_std():
    ae = _identity_ae()
    batches = _batches(1, loc=-1.0, std=0.2)
    ae.set_latent_stats(*measure_latent_stats(ae, batches, 3, center=True))
    z = torch.cat([ae.encode_scaled(b["image"]) for b in batches])
    assert z.std().item() == pytest.approx(1.0, rel=1e-5) and abs(z.mean().item()) < 1e-5


def test_kl_uses_posterior_samples_and_restores_mode():
    net = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, resolution=8)
    ae = Autoencoder(Encoder(2, out_channels=4, **net), KLRegularizer(), Decoder(2, in_channels=2, **net), 2, 2)
    with torch.no_grad():
        ae.quant_conv.bias[2:] += 3.0  # a large posterior variance, so samples and means differ clearly
    ae.train()
    batches = _batches(2)
    s_sample = measure_latent_stats(ae, batches, 3, generator=torch.Generator().manual_seed(0))[0]
    s_mean = measure_latent_stats(ae, batches, 3, sample=False)[0]
    assert ae.training
    assert s_sample < s_mean  # samples have the posterior variance on top of the means'


def test_errors():
    with pytest.raises(DataError):
        measure_latent_stats(_identity_ae(), [], num_batches=1)
    with pytest.raises(DataError, match="constant"):
        measure_latent_stats(_identity_ae(), [torch.ones(2, 2, 4, 4)], num_batches=1)


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        scale, shift = measure_latent_stats(_identity_ae(), _batches(10 + rank, loc=4.0 * rank), 3, center=True)
        torch.save(torch.tensor([scale, shift], dtype=torch.float64), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_all_reduce_over_two_gloo_ranks(tmp_path):
    """Two ranks with different data (means 0 and 4) get the same, global scale and shift."""
    # fork (not spawn): the children inherit the imported torch instead of re-importing it (~1 s vs ~8 s here)
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    data = torch.cat([b["image"] for r in range(2) for b in _batches(10 + r, loc=4.0 * r)]).double()
    torch.testing.assert_close(r0, r1, rtol=0, atol=0)
    torch.testing.assert_close(r0, torch.stack([1.0 / data.std(), data.mean()]), rtol=1e-10, atol=1e-12)
    local = measure_latent_stats(_identity_ae(), _batches(10, loc=0.0), 3)[0]
    assert abs(local - r0[0].item()) > 0.1  # the all-reduce mattered
