"""The bottom of the top floor: how a config becomes objects, and nothing that builds a run.

- OmegaConf resolvers that keep every number in one place: e.g. the denoiser's input size is
  ``${floordiv:${data.resolution},${autoencoder.downsample_factor}}``.
- :func:`instantiate`: Hydra's recursive ``instantiate``, with latentgen's own errors passed through.
- :func:`check_targets`: the allow-list a config read back from a checkpoint must pass *before* anything
  is built from it (see "What a stored config may build" below).
- :func:`to_container` and :func:`config_hash`: the resolved config as plain data, and a short stable hash.

Nothing here imports another latentgen module except :mod:`latentgen.errors` (the import-layer contract
in pyproject.toml keeps it so); targets are resolved by their dotted names at check time.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from latentgen.errors import ConfigError, LatentgenError, WeightsNotFoundError


# ---------------------------------------------------------------------------------------------- resolvers
def _floordiv(a: int, b: int) -> int:
    return int(a) // int(b)


def _mul(*xs: float) -> float:
    out = 1
    for x in xs:
        out = out * x
    return out


def _add(*xs: float) -> float:
    return sum(xs)


def _out_channels(latent_channels: int, learn_variance: bool) -> int:
    """Denoiser output channels: twice the latent channels when the objective learns the variance."""
    return int(latent_channels) * (2 if learn_variance else 1)


def _log2(x: int) -> int:
    x = int(x)
    if x <= 0 or x & (x - 1):
        raise ValueError(f"log2 resolver: {x} is not a power of two")
    return x.bit_length() - 1


# A pretrained diffusers AutoencoderKL (``autoencoder=diffusers``): its folder and the files it must hold.
DIFFUSERS_VAE_CONFIG = "config.json"
DIFFUSERS_VAE_WEIGHTS = "diffusion_pytorch_model.safetensors"
DIFFUSERS_VAE_HOWTO = (
    "first_stage.path must be a diffusers AutoencoderKL folder holding config.json and "
    "diffusion_pytorch_model.safetensors (or a pipeline folder with them in vae/). Nothing is downloaded at run "
    "time: for the Stable Diffusion VAE of DiT/SiT get both files from https://huggingface.co/stabilityai/sd-vae-ft-ema "
    "(`huggingface-cli download stabilityai/sd-vae-ft-ema config.json diffusion_pytorch_model.safetensors "
    "--local-dir /data/sd-vae-ft-ema`) and run with autoencoder=diffusers first_stage.path=/data/sd-vae-ft-ema"
)


def diffusers_vae_dir(path: Any) -> Path:
    """The folder of a diffusers ``AutoencoderKL``: ``path`` itself, or ``path/vae`` for a pipeline folder.

    Raises :class:`ConfigError` for a null path and :class:`WeightsNotFoundError` naming the missing file.
    """
    if path is None or str(path) in ("", "None", "null"):
        raise ConfigError(f"autoencoder=diffusers needs first_stage.path=<folder>. {DIFFUSERS_VAE_HOWTO}")
    root = Path(str(path)).expanduser()
    for folder in (root, root / "vae"):
        if (folder / DIFFUSERS_VAE_CONFIG).is_file():
            return folder
    what = "does not exist" if not root.exists() else f"has no {DIFFUSERS_VAE_CONFIG} (nor vae/{DIFFUSERS_VAE_CONFIG})"
    raise WeightsNotFoundError(f"first_stage.path='{root}' {what}. {DIFFUSERS_VAE_HOWTO}")


def read_diffusers_vae_config(path: Any) -> dict[str, Any]:
    """The ``config.json`` of the diffusers ``AutoencoderKL`` at ``path`` (see :func:`diffusers_vae_dir`)."""
    return dict(json.loads((diffusers_vae_dir(path) / DIFFUSERS_VAE_CONFIG).read_text()))


def _vae_config(path: Any, key: str) -> Any:
    """``${vae_config:<folder>,<key>}``: a value of a diffusers VAE's config.json, or its ``downsample_factor``
    (2**(len(block_out_channels)-1)), so that configs can interpolate ``${autoencoder.latent_channels}``."""
    config = read_diffusers_vae_config(path)
    if key == "downsample_factor":
        return 2 ** (len(config.get("block_out_channels", (64,))) - 1)
    if key == "latent_channels":
        return int(config.get("latent_channels", 4))
    if key not in config:
        raise ConfigError(f"{diffusers_vae_dir(path) / DIFFUSERS_VAE_CONFIG} has no key '{key}'")
    return config[key]


RESOLVERS = {
    "floordiv": _floordiv,
    "mul": _mul,
    "add": _add,
    "out_channels": _out_channels,
    "log2": _log2,
    "vae_config": _vae_config,
}


def register_resolvers() -> None:
    """Register latentgen's resolvers (idempotent; safe to call from every entry point and test)."""
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


# ---------------------------------------------------------------------------------------------- building
def instantiate(node: Any, *args: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, but latentgen's own errors come out as themselves, not wrapped by Hydra."""
    try:
        return hydra_instantiate(node, *args, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, LatentgenError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from e
        raise


def to_container(cfg: DictConfig | ListConfig) -> Any:
    """The resolved config as plain containers (what checkpoints, metrics.json and W&B store)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def config_hash(*nodes: Any) -> str:
    """12 hex digits of a SHA-256 over the resolved nodes (dict order does not matter)."""
    plain = [to_container(n) if isinstance(n, (DictConfig, ListConfig)) else n for n in nodes]
    blob = json.dumps(plain, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def hydra_choice(group: str, default: str) -> str:
    """The option chosen for a config group in the running Hydra app (``default`` outside one)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().runtime.choices.get(group, default))
    except ValueError:
        return default


# ---------------------------------------------------------------------------------------------- allow-list
# What a stored config may build. A checkpoint's config is data written by someone else: evaluate.py
# rebuilds the system from it, so every `_target_` in it is checked before anything is instantiated.
# A target is admitted when it resolves, inside these packages, to
# - a class derived from one of SAFE_BASES (network modules, optimizers, datasets, latentgen's maths
#   components): constructing one of these builds an object and touches no file; or
# - one of the FACTORIES, functions written to be called from configs.
# Anything else (a helper that writes files, `os.system` reached through a module attribute, a builtin)
# is refused with the key path and the target named, before any object is built.
ALLOWED_PACKAGES = ("latentgen.", "torch.", "lightning.")
SAFE_BASES = (
    "torch.nn.Module",
    "torch.optim.Optimizer",
    "torch.optim.lr_scheduler.LRScheduler",
    "torch.utils.data.Dataset",
    "lightning.pytorch.LightningDataModule",
    "latentgen.generative.schedules.NoiseSchedule",
    "latentgen.generative.predictions.Prediction",
    "latentgen.generative.time_samplers.TimeSampler",
    "latentgen.generative.weighting.LossWeighting",
    "latentgen.generative.objective.Objective",
    "latentgen.generative.samplers.Sampler",
    "latentgen.generative.time_grids.Spacing",
    "latentgen.conditioning.tokenizers.Tokenizer",
    "latentgen.metrics.feature_metrics.FeatureMetric",
)
FACTORIES = (
    "latentgen.interop.diffusers_vae.autoencoder_from_diffusers",
    "latentgen.systems.lr_schedules.warmup_cosine",
    "latentgen.conditioning.tokenizers.vocabulary_from_dataset",
    "latentgen.metrics.dataset_classifier.dataset_classifier_extractor",
)


def _resolve(dotted: str) -> Any:
    """The object a dotted path names, importing only the module part (which must be allowed)."""
    from hydra.utils import get_object

    return get_object(dotted)


def _safe_bases() -> tuple[type, ...]:
    bases = []
    for dotted in SAFE_BASES:
        module, _, name = dotted.rpartition(".")
        try:
            bases.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):  # a base another install does not have admits nothing
            continue
    return tuple(bases)


def target_refusal(target: str) -> str | None:
    """Why ``target`` may not be built from a stored config, or None when it may."""
    if not target.startswith(ALLOWED_PACKAGES):
        return f"it is outside {ALLOWED_PACKAGES}"
    try:
        obj = _resolve(target)
    except Exception:  # noqa: BLE001 - an unresolvable target is simply not allowed
        return "it does not resolve to an object"
    module = getattr(obj, "__module__", None) or ""
    if not f"{module}.".startswith(ALLOWED_PACKAGES):
        return f"it resolves to {module or '?'}.{getattr(obj, '__qualname__', '?')}, outside {ALLOWED_PACKAGES}"
    if isinstance(obj, type):
        if issubclass(obj, _safe_bases()):
            return None
        return "it is a class that is none of the component kinds a system is built from"
    if callable(obj) and f"{module}.{getattr(obj, '__qualname__', '')}" in FACTORIES:
        return None
    return "it is a function that is not one of latentgen's config factories"


def check_targets(node: Any, where: str = "config") -> None:
    """Raise :class:`ConfigError` at the first ``_target_`` in ``node`` that :func:`target_refusal` refuses.

    Walks the whole tree (dicts, lists, ``_args_``) without resolving interpolations and builds nothing.
    """
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None:
            why = target_refusal(str(target))
            if why is not None:
                raise ConfigError(
                    f"{where}._target_ = '{target}' is refused: {why}. A config read from a checkpoint may only "
                    "build latentgen's components (modules, schedules, samplers, datasets, ...) and its config "
                    "factories; this checkpoint was not written by latentgen's train.py or was altered."
                )
        for k, v in node.items():
            check_targets(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            check_targets(v, f"{where}[{i}]")
