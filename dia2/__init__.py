"""Dia2: run and adapt Nari Labs' streaming dialogue text-to-speech model.

    from dia2 import Dia2, GenerationConfig
    tts = Dia2.from_repo("nari-labs/Dia2-2B")
    tts.generate("[S1] Hello. [S2] Hi!", GenerationConfig(seed=0)).save("hello.wav")

The names below are imported on first use (PEP 562), so `import dia2.errors` or an entry point's
option parsing does not load torch and the model stack: a command refuses a bad input at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dia2.errors import Dia2Error

_HOMES = {
    "AssetError": "dia2.model.assets",
    "AudioChunk": "dia2.generation.runtime",
    "CheckpointError": "dia2.model.checkpoint",
    "ConfigError": "dia2.model.config",
    "DecodeState": "dia2.model.network",
    "DecoderOutput": "dia2.model.network",
    "Dia2": "dia2.generation.runtime",
    "Dia2Config": "dia2.model.config",
    "Dia2Model": "dia2.model.network",
    "Dia2Output": "dia2.model.network",
    "GenerationConfig": "dia2.generation.config",
    "GenerationResult": "dia2.generation.runtime",
    "SamplingConfig": "dia2.generation.sampling",
    "ScriptError": "dia2.text.script",
    "Voice": "dia2.generation.voice",
    "VoicePrefix": "dia2.generation.prefix",
    "load_config": "dia2.model.config",
    "load_model": "dia2.model.checkpoint",
    "parse_config": "dia2.model.config",
    "read_voice": "dia2.generation.voice",
    "save_model": "dia2.model.checkpoint",
    "write_voice": "dia2.generation.voice",
}

__all__ = sorted(["Dia2Error", *_HOMES])

if TYPE_CHECKING:
    from dia2.generation.config import GenerationConfig
    from dia2.generation.runtime import AudioChunk, Dia2, GenerationResult
    from dia2.generation.sampling import SamplingConfig
    from dia2.generation.prefix import VoicePrefix
    from dia2.generation.voice import Voice, read_voice, write_voice
    from dia2.model.assets import AssetError
    from dia2.model.checkpoint import CheckpointError, load_model, save_model
    from dia2.model.config import ConfigError, Dia2Config, load_config, parse_config
    from dia2.model.network import DecoderOutput, DecodeState, Dia2Model, Dia2Output
    from dia2.text.script import ScriptError


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'dia2' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value
