"""What the engine's tests share (tests/unit/test_engine.py, test_compiled_engine.py): requests of
every kind, each one's tokens generated alone, stepping an engine until it is idle, and adapters."""

from __future__ import annotations

import copy
import time

import pytest
import torch

from dia2 import Dia2, GenerationConfig, SamplingConfig, VoicePrefix
from dia2.model.adapters import load_adapter
from dia2.serving.engine import Engine, Request
from dia2.text.words import SpokenWord
from tests.helpers.adapters import save_random_adapter

GREEDY = SamplingConfig(0.0, 1)


def random_prefix() -> VoicePrefix:
    g = torch.Generator().manual_seed(5)
    words = (SpokenWord("hello", 0.1, 0.5, 1), SpokenWord("you", 0.7, 1.0, 2))
    return VoicePrefix(torch.randint(0, 2048, (8, 16), generator=g), words)


def spoken_pieces(script: str) -> list[str]:
    words = script.split(" ")
    return [words[0]] + [" " + w for w in words[1:]]


# (script, config, voice, streamed): seeds, CFG on and off, greedy and sampled, a voice, streamed text.
CASES = [
    ("[S1] Hello there, how are you?", GenerationConfig(seed=1), None, False),
    ("[S2] I am fine. [S1] Good to hear.", GenerationConfig(seed=2, cfg_scale=1.0), None, False),
    ("[S1] One two three four five.", GenerationConfig(seed=3, text=GREEDY, audio=GREEDY), None, False),
    ("[S2] Short and sweet.", GenerationConfig(seed=4, cfg_scale=3.0), None, True),
    ("[S1] With a voice now.", GenerationConfig(seed=5), random_prefix(), False),
    ("[S2] Greedy, guided, voiced.", GenerationConfig(seed=6, text=GREEDY, audio=GREEDY), random_prefix(), True),
]


def solo_tokens(tts, script, config, voice, streamed) -> torch.Tensor:
    if streamed:
        chunks = list(tts.stream(iter(spoken_pieces(script)), config, prefix=voice))
        return torch.cat([c.codes for c in chunks], dim=1)
    return tts.generate(script, config, prefix=voice).audio_tokens


def make_request(script, config, voice, streamed, adapter=None) -> Request:
    return Request(iter(spoken_pieces(script)) if streamed else script, config, voice, adapter)


def run_engine(engine: Engine, seconds: float = 120.0) -> None:
    """Step the engine until no request is left. Bounded by time, not by a count of steps: a step
    while a request waits for streamed text returns at once without a frame (the text arrives from
    another thread, later on a loaded machine), so a step count would fail a correct engine."""
    deadline = time.monotonic() + seconds
    while engine.step():
        assert time.monotonic() < deadline, "the engine never finished"


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine_adapters")
    return {
        "a": save_random_adapter(root / "a", seed=1, r=4, lora_alpha=8),
        "b": save_random_adapter(root / "b", seed=2, r=8, lora_alpha=16),
    }


@pytest.fixture
def own_tts(tiny_tts):
    """A `Dia2` with its own copy of the tiny model (the engine hooks adapters onto it)."""
    return Dia2(copy.deepcopy(tiny_tts.model), tiny_tts.tokenizer, tiny_tts.codec)


def solo_with_adapter(tts, folder, case):
    """The tokens of `case` alone on `tts` with the adapter at `folder` (None: the base)."""
    if folder is None:
        return solo_tokens(tts, *case)
    adapted = load_adapter(copy.deepcopy(tts.model), folder, merge=False).model
    return solo_tokens(Dia2(adapted, tts.tokenizer, tts.codec), *case)
