"""Locate pretrained weight files without ever downloading them.

Nothing in latentgen downloads weights at run time (clusters are often offline). A weight file is
found, in this order, at:

1. the path given in config (``config_key``),
2. the path in the environment variable ``env_var``,
3. torch's hub cache, ``$TORCH_HOME/hub/checkpoints/<filename>`` (where torchvision / lpips would
   have put it after a download on a machine with internet).

If none exists, :class:`WeightsNotFoundError` says which file is needed, where it normally comes
from, and which key or variable to set.
"""

from __future__ import annotations

import os
from pathlib import Path

from latentgen.errors import WeightsNotFoundError


def torch_hub_checkpoints_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (torch's default cache location), without importing torch."""
    torch_home = os.environ.get("TORCH_HOME")
    if torch_home is None:
        xdg = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
        torch_home = os.path.join(xdg, "torch")
    return Path(torch_home) / "hub" / "checkpoints"


def resolve_weights_file(
    path: str | os.PathLike | None,
    *,
    what: str,
    filename: str,
    config_key: str,
    env_var: str | None = None,
    source_url: str | None = None,
    search_torch_hub: bool = True,
) -> Path:
    """Return an existing weights file or raise a :class:`WeightsNotFoundError` that explains the fix.

    Args:
        path: the path from config, or ``None``.
        what: a human name of the weights ("VGG16 backbone for LPIPS").
        filename: the canonical file name (also looked up in torch's hub cache).
        config_key: the Hydra key a user sets to point at the file.
        env_var: an environment variable that may hold the path.
        source_url: where the file is normally downloaded from.
        search_torch_hub: also look in ``$TORCH_HOME/hub/checkpoints``.
    """
    tried: list[str] = []
    if path not in (None, ""):
        p = Path(os.path.expanduser(str(path)))
        if p.is_file():
            return p
        tried.append(f"{config_key}={p} (no such file)")
    if env_var:
        env_path = os.environ.get(env_var)
        if env_path:
            p = Path(os.path.expanduser(env_path))
            if p.is_file():
                return p
            tried.append(f"${env_var}={p} (no such file)")
    if search_torch_hub:
        p = torch_hub_checkpoints_dir() / filename
        if p.is_file():
            return p
        tried.append(f"{p} (torch hub cache)")
    how = f"set `{config_key}=/path/to/{filename}` on the command line or in config"
    if env_var:
        how += f", or export {env_var}=/path/to/{filename}"
    if search_torch_hub:
        how += f", or copy it to {torch_hub_checkpoints_dir() / filename}"
    src = f" It is normally downloaded from {source_url}." if source_url else ""
    raise WeightsNotFoundError(
        f"{what}: weights file '{filename}' not found; latentgen never downloads weights at run time."
        f"{src} Get the file on a machine with internet, then {how}. Looked at: {'; '.join(tried) or 'nothing'}."
    )


# ---------------------------------------------------------------------------------------------- small networks
# The classifiers latentgen trains itself (FID features on embedded data, the shapes attribute
# classifier) are stored as `<name>.safetensors` (tensors) + `<name>.json` (architecture, format tag,
# training summary) side by side.


def save_weights_with_meta(module, meta: dict, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``module``'s state_dict to ``<path>.safetensors`` and ``meta`` to ``<path>.json``."""
    import json

    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(path))
    json_path = path.with_suffix(".json")
    json_path.write_text(json.dumps(meta, indent=2, sort_keys=True))
    return path, json_path


def read_meta_beside(weights: Path, fmt: str, what: str, rerun: str) -> dict:
    """The ``.json`` beside ``weights``, checked to carry ``format == fmt``; a named error otherwise."""
    import json

    from latentgen.errors import CheckpointError

    json_path = Path(weights).with_suffix(".json")
    if not json_path.is_file():
        raise CheckpointError(
            f"{what} '{weights}' has no '{json_path.name}' beside it (its architecture); re-run `{rerun}` to write both files"
        )
    meta = json.loads(json_path.read_text())
    if meta.get("format") != fmt:
        raise CheckpointError(f"'{json_path}' is not a latentgen {what} (format={meta.get('format')!r})")
    return meta
