"""The model a command speaks with: its options (`ModelOptions`: the source and how to load it),
their checks before anything loads, loading the runtime, the voice folder a --voice names, and
the adapters a server or studio offers as voices.

The model source is one value on every command: `--model` (alias `--hf`, the published CLI's
spelling; the trainer's model.base), a Hub repo id, a local folder, or `tiny`, the embedded demo
model (`--tiny` is its shorthand). Importing this module loads no model stack: the runtime is
imported by `load_tts` only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dia2.device import AUTO
from dia2.generation.voice import Voice, VoiceError, read_voice
from dia2.launch.flags import MODEL_FLAG, adapter_items
from dia2.model.adapter_files import AdapterError, check_adapter_path
from dia2.model.assets import DEFAULT_MODEL, TINY_MODEL, AssetError, ModelSource
from dia2.options import OptionError

if TYPE_CHECKING:
    import torch

    from dia2.generation.tts import Dia2, KernelWrapper
    from dia2.serving.voices import VoiceStore

logger = logging.getLogger(__name__)

TINY_NOTE = "the embedded tiny demo model: random, untrained weights (noise, not speech)"
"""What a command says when it speaks with the tiny model."""


def model_name(model: str, tiny: bool) -> str:
    """The source a command loads: `model`, or tiny for --tiny."""
    return TINY_MODEL if tiny else model


@dataclass(frozen=True)
class ModelOptions:
    """Which Dia2 to load, and how."""

    model: str = DEFAULT_MODEL
    """Hub repo id or local folder of the model, or tiny (the embedded demo model: random, untrained
    weights, no download)."""
    tiny: bool = False
    """Shorthand for --model tiny."""
    config: Path | None = None
    """config.json to use instead of the repo's."""
    weights: Path | None = None
    """model.safetensors to use instead of the repo's."""
    tokenizer: str | None = None
    """Tokenizer folder or repo id (default: the model repo's)."""
    mimi: str | None = None
    """Mimi codec folder or repo id (default: the one the model names)."""
    adapter: str | None = None
    """PEFT LoRA adapter folder or Hub repo id (a trained voice)."""
    unmerged_adapter: bool = False
    """Keep the adapter unmerged (switchable, slower)."""
    low_vram: Literal["8bit", "4bit"] | None = None
    """Quantize the linear layers with bitsandbytes."""
    device: str = AUTO
    """cuda, cuda:1, cpu ... (auto: cuda when available, else cpu)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype (auto: bfloat16 on CUDA, else float32)."""

    @property
    def source(self) -> str:
        """The model source to load: --model, or tiny for --tiny."""
        return model_name(self.model, self.tiny)

    @property
    def torch_dtype(self) -> torch.dtype | None:
        import torch

        return None if self.dtype == "auto" else getattr(torch, self.dtype)


def check_tiny(given: Mapping[str, Any]) -> None:
    """Refuse --tiny beside another model source. `given`: the model flags given on the command
    line (a section of `dia2.options.flag_values`), each named as it was typed (--hf too)."""
    if not given.get("tiny"):
        return
    clashes = [f"{getattr(value, 'given_as', None) or '--' + key} {value}" for key, value in given.items()
               if key in ("config", "weights") or (key == "model" and value != TINY_MODEL)]
    if clashes:
        raise OptionError(f"--tiny is {MODEL_FLAG} {TINY_MODEL}, the embedded demo model; it cannot be combined "
                          f"with {', '.join(clashes)}")


def check_model_options(m: ModelOptions, spelling: Mapping[str, str] | None = None) -> None:
    """Refuse, before anything loads, model options naming what is not there: a --config or
    --weights file, a model folder, a local adapter folder (`spelling`: field -> flag where an
    entry point spells one differently, e.g. the server's --merge-adapter)."""
    for flag, path in (("--config", m.config), ("--weights", m.weights)):
        if path is not None and not path.is_file():
            raise OptionError(f"{flag} {path}: file not found")
    try:
        if m.source != TINY_MODEL:
            ModelSource.resolve(m.source)  # a local folder or a Hub repo id; nothing is fetched
        if m.adapter is not None:
            check_adapter_path(m.adapter, (spelling or {}).get("adapter", "--adapter"))
    except (AssetError, AdapterError) as exc:
        raise OptionError(str(exc)) from None


def read_voice_flag(folder: Path, flag: str = "--voice", *, adapter_given: bool = False) -> Voice:
    """The voice folder a flag names (`dia2.generation.voice`), read before any model loads, its
    local adapter checked too unless `adapter_given` (--adapter replaces it): OptionError naming
    the flag, the file at fault and the fix."""
    try:
        voice = read_voice(folder)
        if voice.adapter is not None and not adapter_given:
            check_adapter_path(voice.adapter, f"{flag} {folder}: its adapter")
    except VoiceError as exc:
        raise OptionError(f"{flag}: {exc}") from None
    except AdapterError as exc:
        raise OptionError(str(exc)) from None
    return voice


def check_served_model(m: ModelOptions, spelling: Mapping[str, str]) -> None:
    """`check_model_options` for a command whose engine applies adapters per request (the server,
    the studio): its model's own adapter is folded into the base, so it cannot stay unmerged."""
    check_model_options(m, spelling)
    if m.unmerged_adapter:
        raise OptionError(f"{spelling['unmerged_adapter']}: the engine applies its adapters per request over a model "
                          f"whose own adapter ({spelling['adapter']}) is merged; leave the flag out")


def load_tts(m: ModelOptions, purpose: str, *, tell: Callable[[str], None] = logger.warning,
             kernel_wrapper: KernelWrapper | None = None) -> Dia2:
    """The Dia2 runtime the model options name (with their adapter merged unless --unmerged-adapter).
    With the tiny model, `tell` says so first: "`purpose` the embedded tiny demo model ..."."""
    from dia2.generation.tts import Dia2

    if m.source == TINY_MODEL:
        tell(f"{purpose} {TINY_NOTE}")
    logger.info("loading the model %s%s", m.source, f" with the adapter {m.adapter}" if m.adapter else "")
    started = time.perf_counter()
    tts = Dia2.from_repo(
        m.source, device=m.device, dtype=m.torch_dtype, config_path=m.config, weights_path=m.weights,
        tokenizer=m.tokenizer, mimi=m.mimi, low_vram=m.low_vram, adapter=m.adapter,
        merge_adapter=not m.unmerged_adapter, kernel_wrapper=kernel_wrapper,
    )
    logger.info("loaded in %.1f s on %s", time.perf_counter() - started, tts.model.device)
    return tts


def offer_adapters(voices: VoiceStore, items: Sequence[str]) -> None:
    """Store each `--adapter NAME=PATH` as an adapter voice (replacing an older one of that name)."""
    for name, path in adapter_items(items):
        if name in voices.names() and voices.get(name).prefix is not None:
            raise OptionError(f"--adapter {name}={path}: the voices folder has a recorded voice named '{name}': "
                              "offer the adapter under another name")
        voices.add_adapter(name, path, replace=True)
