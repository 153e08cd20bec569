"""Export a trained latentgen model as a diffusers folder.

    python -m latentgen.export ckpt=outputs/<run>/checkpoints/last.ckpt out=exported/ [scheduler=ddim] [ema=true]

writes what diffusers' ``from_pretrained`` opens::

    out/vae/         AutoencoderKL (config.json + diffusion_pytorch_model.safetensors)
    out/unet/        UNet2DModel (denoiser=unet_plain) or UNet2DConditionModel (cross-attention), EMA weights
    out/scheduler/   DDPM / DDIM / DPMSolverMultistep / FlowMatchEulerDiscrete scheduler_config.json
    out/model_index.json
    out/pipeline.py  the sampling loop as a diffusers pipeline (``latentgen.interop.latent_pipeline``)

Open and sample it with diffusers alone::

    pipe = DiffusionPipeline.from_pretrained(out, custom_pipeline=f"{out}/pipeline.py", trust_remote_code=True)
    images = pipe(batch_size=4, num_inference_steps=50, generator=torch.Generator().manual_seed(0)).images

A ``model=autoencoder`` checkpoint (or ``vae_only=true``) writes ``out/vae/`` only. The exported UNet takes
diffusers' timesteps (``k`` for diffusion, ``1000 sigma`` for flows); class labels (``conditioner=class_vector``)
are diffusers' ``class_labels`` (the null class of guidance is the last one); cross-attention tokens
(``encoder_hidden_states``) come from latentgen's conditioner, which is not exported (diffusers has no equivalent
of latentgen's text encoders). What diffusers cannot hold exactly is refused with a ConfigError naming the option
(``latentgen.interop.diffusers_unet``, ``latentgen.interop.diffusers_scheduler``). Arguments are ``key=value``:

- ``ckpt`` (required): a latent model's or an autoencoder's ``last.ckpt``;
- ``out`` (required): the folder to write (created; existing files in it are replaced);
- ``scheduler``: ddpm | ddim | dpmpp_2m | flow_euler (default: the one matching the checkpoint's sampler);
- ``ema``: export the EMA weights (default true);
- ``vae_only``: write the autoencoder only (default false).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

from latentgen.errors import ConfigError

__all__ = ["export_to_diffusers", "main", "parse_args"]

log = logging.getLogger(__name__)

_BOOL = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
_KEYS: dict[str, Callable[[str], Any]] = {"ckpt": str, "out": str, "scheduler": str, "ema": lambda v: _BOOL[v.lower()],
         "vae_only": lambda v: _BOOL[v.lower()]}  # fmt: skip


def parse_args(argv: list[str]) -> dict[str, Any]:
    """``key=value`` arguments (see the module docstring) -> options."""
    opts: dict[str, Any] = {"scheduler": None, "ema": True, "vae_only": False}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in _KEYS:
            raise ConfigError(
                f"export: arguments are key=value with key in {sorted(_KEYS)}, got {arg!r} "
                "(e.g. python -m latentgen.export ckpt=run/checkpoints/last.ckpt out=exported)"
            )
        try:
            opts[key] = _KEYS[key](value)
        except KeyError:
            raise ConfigError(f"export: {key}={value!r} is not a boolean (true/false)") from None
    for required in ("ckpt", "out"):
        if required not in opts:
            raise ConfigError(f"export: `{required}=...` is required")
    return opts


def _class_table(conditioner) -> Any:
    """The class-embedding table when the conditioner's vector is a class embedding; refuses what cannot map."""
    from latentgen.conditioning.class_embedder import ClassConditioner

    if conditioner.concat_channels:
        raise ConfigError(
            f"export: conditioner {type(conditioner).__name__} concatenates {conditioner.concat_channels} channels to "
            "x_t (inpainting / super-resolution / semantic maps); diffusers' UNet pipelines have no such input"
        )
    if conditioner.vector_dim is None:
        return None
    if isinstance(conditioner, ClassConditioner) and not conditioner.as_context:
        return conditioner.embedding.weight
    raise ConfigError(
        f"export: conditioner {type(conditioner).__name__} gives a vector (vector_dim={conditioner.vector_dim}) that "
        "is not a class embedding; diffusers' UNets add only class embeddings to the time embedding"
    )


def export_to_diffusers(
    system, out_dir: str | Path, *, scheduler: str | None = None, use_ema: bool = True, vae: bool = True
) -> Path:
    """Write ``unet/``, ``scheduler/``, ``model_index.json`` (and ``vae/``) of a LatentGenerativeSystem."""
    import diffusers

    from latentgen.interop import latent_pipeline
    from latentgen.interop.diffusers_scheduler import diffusers_scheduler_config, time_shift
    from latentgen.interop.diffusers_unet import unet_to_diffusers
    from latentgen.networks.unet import UNet

    out = Path(out_dir)
    nets = system.ema.shadow if use_ema else system.trainable
    denoiser, conditioner = nets["denoiser"], nets["conditioner"]
    if not isinstance(denoiser, UNet):
        raise ConfigError(f"export: denoiser {type(denoiser).__name__} has no diffusers export (only the UNet)")
    param = system.objective.parameterization
    sched_cls, sched_config = diffusers_scheduler_config(param, system.sampler, scheduler)  # refusals first
    class_table = _class_table(conditioner)
    unet = unet_to_diffusers(denoiser, time_shift=time_shift(param), class_table=class_table)
    if class_table is not None:
        log.info(
            "class labels: 0..%d, the null (unconditional) class is %d", len(class_table) - 2, len(class_table) - 1
        )
    if denoiser.context_dim is not None:
        log.info(
            "the UNet cross-attends to encoder_hidden_states from latentgen's %s, which is not exported",
            type(conditioner).__name__,
        )
    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    getattr(diffusers, sched_cls)(**sched_config).save_pretrained(out / "scheduler")
    shutil.copyfile(Path(latent_pipeline.__file__), out / "pipeline.py")  # diffusers' custom_pipeline
    index: dict[str, Any] = {
        "_class_name": "LatentgenPipeline",
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", type(unet).__name__],
        "scheduler": ["diffusers", sched_cls],
    }
    if vae:
        _export_vae(system.first_stage, out / "vae")
        index["vae"] = ["diffusers", "AutoencoderKL"]
    (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
    return out


def _export_vae(autoencoder, out_dir: Path) -> None:
    from latentgen.interop.diffusers_vae import save_vae_as_diffusers

    save_vae_as_diffusers(autoencoder, out_dir)


def main(argv: list[str] | None = None) -> int:
    from latentgen.app.building import load_system_from_checkpoint
    from latentgen.systems.autoencoder import AutoencoderSystem

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    system, _ = load_system_from_checkpoint(opts["ckpt"])
    out = Path(opts["out"])
    if isinstance(system, AutoencoderSystem):
        _export_vae(system.autoencoder, out / "vae")
    elif opts["vae_only"]:
        _export_vae(system.first_stage, out / "vae")
    else:
        export_to_diffusers(system, out, scheduler=opts["scheduler"], use_ema=opts["ema"])
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
