"""Dia2: run and adapt Nari Labs' streaming dialogue text-to-speech model."""

from dia2.assets import AssetError
from dia2.checkpoint import CheckpointError, load_model, save_model
from dia2.config import ConfigError, Dia2Config, load_config, parse_config
from dia2.model import DecodeState, DecoderOutput, Dia2Model, Dia2Output

__all__ = [
    "AssetError",
    "CheckpointError",
    "ConfigError",
    "DecodeState",
    "DecoderOutput",
    "Dia2Config",
    "Dia2Model",
    "Dia2Output",
    "load_config",
    "load_model",
    "parse_config",
    "save_model",
]
