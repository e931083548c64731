"""Dia2: run and adapt Nari Labs' streaming dialogue text-to-speech model.

    from dia2 import Dia2, GenerationConfig
    tts = Dia2.from_repo("nari-labs/Dia2-2B")
    tts.generate("[S1] Hello. [S2] Hi!", GenerationConfig(seed=0)).save("hello.wav")
"""

from dia2.errors import Dia2Error
from dia2.generation.loop import GenerationConfig
from dia2.generation.runtime import AudioChunk, Dia2, GenerationResult
from dia2.generation.sampling import SamplingConfig
from dia2.generation.voice import Voice
from dia2.model.assets import AssetError
from dia2.model.checkpoint import CheckpointError, load_model, save_model
from dia2.model.config import ConfigError, Dia2Config, load_config, parse_config
from dia2.model.network import DecoderOutput, DecodeState, Dia2Model, Dia2Output
from dia2.text.script import ScriptError

__all__ = [
    "AssetError",
    "AudioChunk",
    "CheckpointError",
    "ConfigError",
    "DecodeState",
    "DecoderOutput",
    "Dia2",
    "Dia2Config",
    "Dia2Error",
    "Dia2Model",
    "Dia2Output",
    "GenerationConfig",
    "GenerationResult",
    "SamplingConfig",
    "ScriptError",
    "Voice",
    "load_config",
    "load_model",
    "parse_config",
    "save_model",
]
