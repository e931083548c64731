"""Speech spans by frame energy (dia2.audio.activity): where a transcript's words go without a recogniser."""

import numpy as np
import pytest
import soundfile as sf

from dia2.audio.activity import speech_spans
from tests.conftest import REPO_ROOT

RATE = 24000


def _tone(seconds: float, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (level * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_spans_of_sound_between_silences():
    quiet = lambda s: np.zeros(int(s * RATE), np.float32)  # noqa: E731
    wave = np.concatenate([quiet(0.5), _tone(1.0), quiet(0.5), _tone(0.4, 0.05), quiet(0.1), _tone(0.3), quiet(0.3)])
    spans = [(round(s.start, 2), round(s.end, 2)) for s in speech_spans(wave, RATE, speaker=2)]
    # The quieter tone is within range of the loudest; the 0.1 s pause after it is bridged.
    assert spans == [(0.5, 1.5), (2.0, 2.8)]
    assert {s.speaker for s in speech_spans(wave, RATE, speaker=2)} == {2}


def test_clicks_and_silence_are_not_speech():
    wave = np.zeros(RATE, np.float32)
    assert speech_spans(wave, RATE) == []
    wave[RATE // 2 : RATE // 2 + 200] = 0.5  # an 8 ms click
    assert speech_spans(wave, RATE) == []


@pytest.mark.parametrize("name,pause", [("voice_a", None), ("voice_b", (0.84, 1.02))])
def test_espeak_speech_is_found(name, pause):
    wave, rate = sf.read(REPO_ROOT / "tests" / "fixtures" / "audio" / f"{name}.flac", dtype="float32")
    spans = speech_spans(wave, rate)
    assert spans[0].start < 0.1 and spans[-1].end > len(wave) / rate - 0.6
    if pause is not None:  # voice_b pauses after "Hello there,"
        assert any(a.end == pytest.approx(pause[0], abs=0.05) and b.start == pytest.approx(pause[1], abs=0.05)
                   for a, b in zip(spans, spans[1:]))
