"""Training-step and sampling cost of the study's models, measured apart from the training jobs (which ran on a
loaded machine, so their wall times mix in other work).

For each `ldm=` choice of the study it builds the denoiser and the first stage from the composed config
(random weights: cost does not depend on them) and times, in one process with one thread and interleaved
round by round: one training step of the denoiser (batch 24 latents, MSE, backward, AdamW) and a batch of
100 latents through 10 guidance-free denoiser calls (10 DDIM steps = 10 NFE) plus one decode; the median
of 5 rounds in process CPU time.

    OMP_NUM_THREADS=1 PYTHONPATH=src python experiments/dit_vs_unet/cost.py [--out <json>]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from latentgen.config import instantiate, register_resolvers

CONF = Path(__file__).resolve().parents[2] / "conf"
CHOICES = ["f4", "dit_f4p2", "dit_f2p4", "dit_f8p1"]
BATCH, NFE, ROUNDS, TRAIN_BATCH = 100, 10, 5, 24


def build(ldm: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=f_sweep", f"ldm={ldm}"])
    torch.manual_seed(0)
    return instantiate(cfg.denoiser).eval(), instantiate(cfg.autoencoder).eval()


@torch.inference_mode()
def one_round(denoiser: torch.nn.Module, autoencoder: torch.nn.Module) -> tuple[float, float]:
    """(CPU seconds of the NFE denoiser calls, CPU seconds of the decode) for one batch."""
    s = denoiser.input_size
    z = torch.randn(BATCH, autoencoder.latent_channels, s, s)
    c0 = time.process_time()
    for k in range(NFE):
        out = denoiser(z, torch.full((BATCH,), 1 - k / NFE))
        z = z - 0.1 * out[:, : z.shape[1]]
    c1 = time.process_time()
    autoencoder.decode_scaled(z)
    return c1 - c0, time.process_time() - c1


def train_step(denoiser: torch.nn.Module, opt: torch.optim.Optimizer) -> float:
    """CPU seconds of one optimisation step of the denoiser alone (no first stage: latents are given)."""
    s = denoiser.input_size
    z = torch.randn(TRAIN_BATCH, denoiser.in_channels, s, s)
    c0 = time.process_time()
    denoiser.train()
    opt.zero_grad(set_to_none=True)
    out = denoiser(z, torch.rand(TRAIN_BATCH))
    out.square().mean().backward()
    opt.step()
    denoiser.eval()
    return time.process_time() - c0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "cost.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    register_resolvers()
    models = {ldm: build(ldm) for ldm in CHOICES}
    opts = {ldm: torch.optim.AdamW(models[ldm][0].parameters(), lr=1e-4) for ldm in CHOICES}
    times: dict[str, list[tuple[float, float, float]]] = {ldm: [] for ldm in CHOICES}
    for r in range(ROUNDS + 1):
        for ldm in CHOICES if r % 2 == 0 else CHOICES[::-1]:
            t = (*one_round(*models[ldm]), train_step(models[ldm][0], opts[ldm]))
            if r:  # round 0 warms up
                times[ldm].append(t)
    results = {}
    for ldm, ts in times.items():
        den, dec, step = (statistics.median(t[i] for t in ts) for i in range(3))
        results[ldm] = {
            "train_step_cpu_s": step,
            "denoiser_cpu_s_per_batch": den,
            "decode_cpu_s_per_batch": dec,
            "images_per_cpu_s": BATCH / (den + dec),
        }
        print(
            f"{ldm:9} train step {step:6.3f} s | sampling: denoiser {den:6.3f} s  decode {dec:6.3f} s  -> "
            f"{BATCH / (den + dec):7.1f} img/s (10 NFE)"
        )
    info = {"batch": BATCH, "nfe": NFE, "rounds": ROUNDS, "train_batch": TRAIN_BATCH}
    args.out.write_text(json.dumps({**info, "results": results}, indent=1))


if __name__ == "__main__":
    main()
