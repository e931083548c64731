"""Dia2 weight files (`model.safetensors`, spec sections 1 and 3): finding, reading and writing them.

`Dia2Model.from_pretrained` (`dia2.model.network`) builds a model and loads it through this module.
Weights are streamed: the model is built on the meta device, storage is allocated once on the
target device, and each tensor is read from the (memory-mapped) file, cast and copied in place.
Peak memory is the model plus one tensor, never two full copies. Every check runs against the
file header before any storage is allocated.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from dia2.errors import Dia2Error
from dia2.model.assets import AssetError, ModelSource, manifest_name
from dia2.model.config import Dia2Config

logger = logging.getLogger(__name__)

_SHOW = 5  # how many key names an error lists before "... and N more"
TOKENIZER_CONFIG = "tokenizer_config.json"


class CheckpointError(Dia2Error, RuntimeError):
    """Weights that do not fit the model or cannot be read; the message says what to do."""


@dataclass(frozen=True)
class ModelFiles:
    """The resolved files of one model: config and weights paths, plus the manifest's assets."""

    config: Path
    weights: Path
    tokenizer: str | None
    mimi: str | None
    source: ModelSource


def resolve_files(
    source: ModelSource,
    config_path: str | os.PathLike | None = None,
    weights_path: str | os.PathLike | None = None,
) -> ModelFiles:
    """Find config and weights of a model folder or Hub repo, honouring `dia2_assets.json`.

    Explicit `config_path` / `weights_path` (local files) take precedence over the repo's. A
    config inside a complete model folder (a merged export: manifest or tokenizer beside it)
    makes that folder the model: its weights (unless `weights_path` is given), tokenizer and Mimi
    are used in place of `source`'s.
    """
    explicit_config = _explicit(config_path, "config")
    if explicit_config is not None and _holds_assets(explicit_config.parent):
        logger.info("%s sits in a complete model folder: loading that folder, not %s", explicit_config, source.location)
        source = ModelSource.resolve(explicit_config.parent)
    manifest = source.manifest()
    config = explicit_config or source.file(manifest.config)
    weights = _explicit(weights_path, "weights") or source.file(manifest.weights)
    return ModelFiles(config, weights, manifest.tokenizer, manifest.mimi, source)


def _holds_assets(folder: Path) -> bool:
    """Whether `folder` is a model folder with its own assets, not a loose config file's home."""
    return (folder / manifest_name()).is_file() or (folder / TOKENIZER_CONFIG).is_file()


def _explicit(path: str | os.PathLike | None, what: str) -> Path | None:
    if path is None:
        return None
    path = Path(path).expanduser()
    if not path.is_file():
        raise AssetError(f"{what} file {path} not found")
    return path


def load_weights(model: torch.nn.Module, path: str | os.PathLike, device: torch.device | str | None = None) -> None:
    """Stream a safetensors file into `model` (strict: same keys, same shapes).

    A model on the meta device gets its storage allocated on `device` first; a materialised
    model is overwritten in place. Tensors are cast to the model's dtype as they are copied.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} not found")
    params = dict(model.state_dict(keep_vars=True))
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            _check_keys(set(params), set(f.keys()), path)
            _check_shapes({k: tuple(f.get_slice(k).get_shape()) for k in params}, params, path)
            if any(p.is_meta for p in params.values()):
                model.to_empty(device=device or "cpu")
                params = dict(model.state_dict(keep_vars=True))
            with torch.no_grad():
                for name, param in params.items():
                    param.copy_(f.get_tensor(name))
    except SafetensorError as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc}); it may be truncated or corrupt: "
            "delete it and download it again"
        ) from exc
    logger.info("loaded %d tensors from %s", len(params), path)


def _check_keys(expected: set[str], found: set[str], path: Path) -> None:
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if not missing and not unexpected:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_names(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_names(unexpected)}")
    raise CheckpointError(
        f"{path} does not match the model built from its config ({'; '.join(parts)}). "
        "Check that config.json and model.safetensors come from the same Dia2 checkpoint."
    )


def _check_shapes(file_shapes: dict[str, tuple[int, ...]], params: dict[str, torch.Tensor], path: Path) -> None:
    for name, param in params.items():
        if file_shapes[name] != tuple(param.shape):
            raise CheckpointError(
                f"{path}: '{name}' has shape {list(file_shapes[name])} in the file but "
                f"{list(param.shape)} in the model built from config.json; the config and weights disagree"
            )


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f", ... and {len(keys) - _SHOW} more" if len(keys) > _SHOW else "")


def save_model(model: torch.nn.Module, folder: str | os.PathLike, dtype: torch.dtype | None = torch.float32) -> Path:
    """Write a `Dia2Model`'s `config.json` + `model.safetensors` (float32 by default, like the published files).

    The weights are written to a temporary name and renamed, so an interrupted save never
    leaves a truncated `model.safetensors` behind.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.detach().to(dtype) if dtype is not None else v.detach()).contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    tmp = folder / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    # safetensors writes 0600; a model folder is meant to be shared, like every other file in it.
    os.chmod(tmp, _file_mode())
    os.replace(tmp, folder / "model.safetensors")
    save_config(model.config, folder / "config.json")
    return folder


def _file_mode() -> int:
    """The mode an ordinary new file gets under the process umask (0644 under umask 022).

    Read from /proc, not by setting and restoring the umask: that would leave a window in which
    another thread's new files get mode 0666.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    return 0o644


def save_config(cfg: Dia2Config, path: str | os.PathLike) -> None:
    Path(path).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n", encoding="utf-8")
