"""Dia2: run and adapt Nari Labs' streaming dialogue text-to-speech model.

    from dia2 import Dia2, GenerationConfig
    tts = Dia2.from_repo("nari-labs/Dia2-2B")
    tts.generate("[S1] Hello. [S2] Hi!", GenerationConfig(seed=0)).save("hello.wav")
"""

from dia2.assets import AssetError
from dia2.checkpoint import CheckpointError, load_model, save_model
from dia2.config import ConfigError, Dia2Config, load_config, parse_config
from dia2.generation import GenerationConfig
from dia2.model import DecodeState, DecoderOutput, Dia2Model, Dia2Output
from dia2.prefix import Voice
from dia2.runtime import AudioChunk, Dia2, GenerationResult
from dia2.sampling import SamplingConfig
from dia2.text import ScriptError

__all__ = [
    "AssetError",
    "AudioChunk",
    "CheckpointError",
    "ConfigError",
    "DecodeState",
    "DecoderOutput",
    "Dia2",
    "Dia2Config",
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
