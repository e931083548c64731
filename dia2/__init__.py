"""Dia2: run and adapt Nari Labs' streaming dialogue text-to-speech model.

    from dia2 import Dia2, GenerationConfig
    tts = Dia2.from_repo("nari-labs/Dia2-2B")
    tts.generate("[S1] Hello. [S2] Hi!", GenerationConfig(seed=0)).save("hello.wav")

The names below are imported on first use (PEP 562), so `import dia2.errors` or an entry point's
option parsing does not load torch and the model stack: a command refuses a bad input at once.

Layout, in the direction of the data flow. A module imports only its own sub-package and what is
listed above it (audio and data, serving and evaluation do not import each other); nothing here
imports `data_prep`, `finetune` or a command (tests/unit/test_imports.py checks it):

    errors.py     the one error base every command reports
    console.py, device.py, options.py, output_paths.py, processes.py, progress.py
                  what every command shares: logging, the device check, option dataclasses ->
                  flags and --help, output checks, pid checks, progress lines
    model/        config.json, the network, weight files and assets, LoRA adapters, quantization
    text/         scripts, tokenizer, the text state machine, timed words, word-to-frame alignment
    audio/        the Mimi codec, audio files and encodings, speech recognition, speech quality
    data/         the token grid shared by training and decoding, the corpus schema
    tiny.py       the embedded tiny model (built in-process) and `tiny` as a model name
    generation/   sampling, the frame loop, voices, long scripts, CUDA graphs, the `Dia2` API (tts.py)
    serving/      the batched engine, stored voices, the OpenAI-compatible speech API
    evaluation/   scores of voices: intelligibility, speaker similarity, behaviour; reports
    studio/       the Gradio studio: its tabs, the backend they share, background jobs
    cli.py (dia2-infer), api_server.py (the speech server), evaluation/cli.py (dia2-eval),
    studio/app.py (dia2-studio, gradio_app.py), demo.py: the commands, on top of all the rest
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dia2.errors import Dia2Error

_HOMES = {
    "AssetError": "dia2.model.assets",
    "AudioChunk": "dia2.generation.tts",
    "CheckpointError": "dia2.model.checkpoint",
    "ConfigError": "dia2.model.config",
    "DecodeState": "dia2.model.network",
    "DecoderOutput": "dia2.model.network",
    "Dia2": "dia2.generation.tts",
    "Dia2Config": "dia2.model.config",
    "Dia2Model": "dia2.model.network",
    "Dia2Output": "dia2.model.network",
    "GenerationConfig": "dia2.generation.config",
    "GenerationResult": "dia2.generation.tts",
    "SamplingConfig": "dia2.generation.sampling",
    "ScriptError": "dia2.text.script",
    "Voice": "dia2.generation.voice",
    "VoicePrefix": "dia2.generation.prefix",
    "load_config": "dia2.model.config",
    "load_model": "dia2.model.network",
    "parse_config": "dia2.model.config",
    "read_voice": "dia2.generation.voice",
    "save_model": "dia2.model.checkpoint",
    "write_voice": "dia2.generation.voice",
}

__all__ = sorted(["Dia2Error", *_HOMES])

if TYPE_CHECKING:
    from dia2.generation.config import GenerationConfig
    from dia2.generation.sampling import SamplingConfig
    from dia2.generation.prefix import VoicePrefix
    from dia2.generation.tts import AudioChunk, Dia2, GenerationResult
    from dia2.generation.voice import Voice, read_voice, write_voice
    from dia2.model.assets import AssetError
    from dia2.model.checkpoint import CheckpointError, save_model
    from dia2.model.config import ConfigError, Dia2Config, load_config, parse_config
    from dia2.model.network import DecoderOutput, DecodeState, Dia2Model, Dia2Output, load_model
    from dia2.text.script import ScriptError


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'dia2' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value
