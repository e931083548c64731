"""A LoRA adapter on disk, read without PEFT or torch: where its folder is (local, or a Hub repo
id) and what its adapter_config.json says.

`dia2.model.adapters` applies adapters and builds on this; entry points use `check_adapter_path`
to refuse a missing or broken local adapter before anything loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dia2.errors import Dia2Error
from dia2.model.assets import AssetError, ModelSource

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"

# The linear layers a voice adapter trains by default (a PEFT regex, matched with re.fullmatch
# against module names), in both stacks:
#   decoder:   transformer.layers.{i}.attn.{q,k,v,o}_proj, transformer.layers.{i}.mlp.{wi,wo}
#   depformer: depformer.layers.{i}.self_attention.{in_proj,out_proj}.{g} (every weight group),
#              depformer.layers.{i}.mlp.{wi,wo}, depformer.depformer_in.{g}
# Left out: embeddings and the text embedding's projections (the text side does not change with
# the voice) and the output heads (action_head, cb0_head, depformer.logits.{s}), which
# `dia2.model.quant` also keeps in full precision, so QLoRA adapts exactly the quantized layers.
DEFAULT_TARGET_MODULES = (
    r"transformer\.layers\.\d+\.(attn\.[qkvo]_proj|mlp\.w[io])"
    r"|depformer\.layers\.\d+\.(self_attention\.(in|out)_proj\.\d+|mlp\.w[io])"
    r"|depformer\.depformer_in\.\d+"
)


class AdapterError(Dia2Error, ValueError):
    """An adapter that cannot be found, read, or applied to this model; the message says what to do."""


def local_adapter(adapter: str | os.PathLike) -> Path | None:
    """The local folder `adapter` names, checked (its two files); None when it names a Hub repo
    (no local folder, and it reads as owner/name). AdapterError for anything else."""
    text = str(adapter)
    path = Path(adapter).expanduser()
    if path.is_dir():
        _check_adapter_folder(path, text)
        return path
    if path.exists():
        raise AdapterError(f"adapter '{text}' is a file: pass the adapter folder (holding {CONFIG_NAME}) or a Hub repo id")
    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise AdapterError(
            f"adapter '{text}' is neither an existing folder nor a Hub repo id like 'user/my-voice-lora': check the path"
        )
    return None


def resolve_adapter(adapter: str | os.PathLike, revision: str | None = None, cache_dir: str | None = None) -> Path:
    """The local folder holding the adapter's two files (downloaded or from the Hub cache)."""
    folder = local_adapter(adapter)
    if folder is not None:
        return folder
    text = str(adapter)
    source = ModelSource(text, is_local=False, revision=revision, cache_dir=cache_dir)
    try:
        config_path = source.file(CONFIG_NAME)
        source.file(WEIGHTS_NAME)
    except AssetError as exc:
        raise AdapterError(f"adapter '{text}' is not a local folder, and the Hub cannot provide it: {exc}") from exc
    assert config_path is not None  # required files either resolve or raise
    return config_path.parent


def check_adapter_path(adapter: str, flag: str) -> None:
    """Refuse, before anything loads, an adapter given with `flag` that is not a Hub repo id and
    not a complete local adapter folder (a Hub adapter is checked when it is fetched)."""
    try:
        folder = local_adapter(adapter)
        if folder is not None:
            read_adapter_json(folder, adapter)
    except AdapterError as exc:
        raise AdapterError(f"{flag} {adapter}: {exc}") from None


def _check_adapter_folder(path: Path, label: str) -> None:
    """Refuse a folder without the adapter's two files, saying what it holds instead."""
    if not (path / CONFIG_NAME).is_file() and (path / "adapter" / CONFIG_NAME).is_file():
        raise AdapterError(
            f"'{label}' is a training run folder: pass its adapter folder, '{Path(label) / 'adapter'}'"
        )
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if (path / name).is_file():
            continue
        legacy = path / "adapter_model.bin"
        if name == WEIGHTS_NAME and legacy.is_file():
            raise AdapterError(
                f"adapter folder '{label}' holds {legacy.name} (PEFT's old pickle format), not {WEIGHTS_NAME}: "
                "Dia2 loads safetensors only (pickles can run code); re-save the adapter with PEFT's "
                "save_pretrained(safe_serialization=True)"
            )
        raise AdapterError(
            f"adapter folder '{label}' has no {name}: pass the folder PEFT's save_pretrained "
            f"wrote (it holds {CONFIG_NAME} and {WEIGHTS_NAME})"
        )


def read_adapter_json(folder: Path, label: str) -> dict[str, Any]:
    """`adapter_config.json` of `folder` as a JSON object; refuse anything but a PEFT LoRA config."""
    path = folder / CONFIG_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterError(
            f"adapter '{label}': {path} is not valid JSON ({exc}); re-save the adapter with PEFT's save_pretrained"
        ) from exc
    if not isinstance(raw, dict):
        raise AdapterError(f"adapter '{label}': {path} must hold a JSON object, got {type(raw).__name__}")
    peft_type = raw.get("peft_type")
    if peft_type != "LORA":
        raise AdapterError(
            f"adapter '{label}' is not a LoRA adapter ({CONFIG_NAME} has peft_type = {peft_type!r}); "
            "Dia2 loads PEFT LoRA adapters only"
        )
    return raw
