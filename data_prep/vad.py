"""Speech activity: where a recording holds speech (silero-vad), and cut boundaries that respect it.

silero-vad scores each 32 ms frame of 16 kHz audio with a speech probability. Its wheel ships the
models; this module runs the "sequence" ONNX export (whole blocks of frames per call; the same
probabilities as the frame-by-frame model) with onnxruntime directly, and turns probabilities
into regions with silero's own hysteresis: speech starts at a frame at or above `threshold` and
ends where the probability stays below `threshold - 0.15` for `min_silence_seconds`. (silero_vad's
Python package is not imported: importing it sets torch to one thread for the whole process.)

`refine_cut` moves a cut's boundaries (from word timestamps, say) so that it never starts or ends
inside speech, and trims or extends the silence at each end to `speech_pad_seconds`.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dia2.audio.io import resample
from dia2.errors import Dia2Error

VAD_RATE = 16000
FRAME_SAMPLES = 512  # 32 ms at 16 kHz: the model's frame
_CONTEXT_SAMPLES = 64  # each frame is scored with the last 64 samples of the one before
_BLOCK_FRAMES = 512  # frames per ONNX call (16.4 s)
_MODEL_FILE = "silero_vad_16k_sequence.onnx"
_NEGATIVE_MARGIN = 0.15  # silero's hysteresis: speech ends below threshold - 0.15

NO_SPEECH = "no speech"
SPEECH_AT_START = "speech runs across the start"
SPEECH_AT_END = "speech runs across the end"


class VadError(Dia2Error, ValueError):
    """A speech-activity setting or model that cannot work; the message names it and the fix."""


@dataclass(frozen=True)
class VadConfig:
    """Speech activity: silero-vad finds the speech, so cuts never start or end inside it."""

    vad: bool = True
    """Refine each cut's boundaries with silero-vad and measure its speech fraction (--no-vad: the
    word times alone, with --lead-seconds before the first word); measured harmless on clean speech."""
    vad_threshold: float = 0.5
    """Speech probability (0-1) at which silero-vad hears speech start; lower hears more, noise included."""
    min_speech_seconds: float = 0.25
    """Shorter bursts of speech probability are dropped as clicks or breaths (seconds)."""
    min_silence_seconds: float = 0.1
    """A pause must last this long to end a speech region (seconds)."""
    speech_pad_seconds: float = 0.1
    """Silence kept before a cut's first and after its last speech (seconds)."""
    max_boundary_shift: float = 0.5
    """Farthest a cut boundary that falls inside speech moves out to the speech's edge (seconds);
    speech that runs on further belongs to another utterance, and the cut is refused."""

    def __post_init__(self) -> None:
        if not 0 < self.vad_threshold < 1:
            raise VadError(f"the speech threshold {self.vad_threshold} must lie strictly between 0 and 1 (silero-vad's default is 0.5)")
        for name, value in (("shortest speech", self.min_speech_seconds), ("shortest pause", self.min_silence_seconds),
                            ("silence pad", self.speech_pad_seconds), ("largest boundary shift", self.max_boundary_shift)):
            if not (math.isfinite(value) and value >= 0):
                raise VadError(f"the {name} must be a number of seconds >= 0, got {value}")


@dataclass(frozen=True)
class SpeechRegion:
    """A stretch of speech, in seconds from the start of the audio."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class RefinedCut:
    """A cut's new bounds (seconds), the speech they hold (seconds), and `reason`: None when the
    cut is usable, else why not (NO_SPEECH, SPEECH_AT_START, SPEECH_AT_END; the bounds are then
    the ones given)."""

    start: float
    end: float
    speech_seconds: float
    reason: str | None = None

    @property
    def speech_fraction(self) -> float:
        return self.speech_seconds / (self.end - self.start) if self.end > self.start else 0.0


class SpeechDetector:
    """silero-vad, loaded on first use (one ONNX session, one thread)."""

    def __init__(self, config: VadConfig = VadConfig()) -> None:
        self.config = config
        self._session = None

    def load(self):
        if self._session is None:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.inter_op_num_threads = options.intra_op_num_threads = 1  # a recurrent model: one frame after another
            self._session = onnxruntime.InferenceSession(str(_model_path()), sess_options=options, providers=["CPUExecutionProvider"])
        return self._session

    def probabilities(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """Mono [S] at `sample_rate` -> speech probability per 32 ms frame [T] (T = ceil(S16 / 512))."""
        session = self.load()
        audio = resample(np.asarray(waveform, dtype=np.float32), sample_rate, VAD_RATE)
        count = -(-len(audio) // FRAME_SAMPLES)
        frames = np.zeros((count, FRAME_SAMPLES), np.float32)
        frames.reshape(-1)[: len(audio)] = audio
        context = np.zeros((count, _CONTEXT_SAMPLES), np.float32)
        context[1:] = frames[:-1, -_CONTEXT_SAMPLES:]
        inputs = np.concatenate([context, frames], axis=1)
        h = c = np.zeros((1, 1, 128), np.float32)
        out = []
        for first in range(0, count, _BLOCK_FRAMES):
            probs, h, c = session.run(["speech_probs", "hn", "cn"], {"input": inputs[first : first + _BLOCK_FRAMES], "h": h, "c": c})
            out.append(probs.reshape(-1))
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def regions(self, waveform: np.ndarray, sample_rate: int) -> list[SpeechRegion]:
        """The speech regions of mono [S], in order, each at least `min_speech_seconds` long."""
        probs = self.probabilities(waveform, sample_rate)
        return speech_regions(probs, self.config, len(waveform) / sample_rate)


def speech_regions(probabilities: np.ndarray, config: VadConfig, seconds: float | None = None) -> list[SpeechRegion]:
    """Per-frame speech probabilities [T] -> regions (silero's hysteresis); `seconds` caps the last end."""
    frame = FRAME_SAMPLES / VAD_RATE
    low = max(config.vad_threshold - _NEGATIVE_MARGIN, 0.01)
    min_silence = config.min_silence_seconds / frame
    regions, start, quiet_since = [], None, None
    for i, p in enumerate(np.asarray(probabilities, dtype=np.float64)):
        if start is None:
            if p >= config.vad_threshold:
                start, quiet_since = i, None
            continue
        if p >= config.vad_threshold:
            quiet_since = None
        elif p < low:
            quiet_since = i if quiet_since is None else quiet_since
            if i - quiet_since >= min_silence:
                regions.append((start, quiet_since))
                start, quiet_since = None, None
    if start is not None:
        regions.append((start, quiet_since if quiet_since is not None else len(probabilities)))
    end_cap = seconds if seconds is not None else math.inf
    return [SpeechRegion(a * frame, min(b * frame, end_cap)) for a, b in regions if (b - a) * frame >= config.min_speech_seconds]


def speech_seconds(start: float, end: float, regions: Sequence[SpeechRegion]) -> float:
    """Seconds of speech inside [start, end)."""
    return sum(max(0.0, min(end, r.end) - max(start, r.start)) for r in regions)


def speech_fraction(start: float, end: float, regions: Sequence[SpeechRegion]) -> float:
    """Share of [start, end) that is speech (0 for an empty span)."""
    return speech_seconds(start, end, regions) / (end - start) if end > start else 0.0


def refine_cut(
    start: float, end: float, regions: Sequence[SpeechRegion], config: VadConfig = VadConfig(), lo: float = 0.0, hi: float = math.inf
) -> RefinedCut:
    """Bounds for the cut [start, end) that neither start nor end inside speech, with `speech_pad_seconds`
    of silence before its first and after its last speech where [lo, hi] (the audio, or the room
    between the neighbouring cuts) and the neighbouring speech leave it.

    A boundary inside a speech region moves out to the region's edge when that is at most
    `max_boundary_shift` away and within [lo, hi]; otherwise the cut is refused (SPEECH_AT_START or
    SPEECH_AT_END): the speech there runs into another utterance. A cut with no speech gets NO_SPEECH.
    """
    inside = [r for r in regions if r.end > start and r.start < end]
    if not inside:
        return RefinedCut(start, end, 0.0, NO_SPEECH)
    first, last = inside[0], inside[-1]
    if first.start < start and (start - first.start > config.max_boundary_shift or first.start < lo):
        return RefinedCut(start, end, speech_seconds(start, end, regions), SPEECH_AT_START)
    if last.end > end and (last.end - end > config.max_boundary_shift or last.end > hi):
        return RefinedCut(start, end, speech_seconds(start, end, regions), SPEECH_AT_END)
    before = max([r.end for r in regions if r.end <= first.start], default=-math.inf)
    after = min([r.start for r in regions if r.start >= last.end], default=math.inf)
    new_start = max(first.start - config.speech_pad_seconds, lo, before)
    new_end = min(last.end + config.speech_pad_seconds, hi, after)
    return RefinedCut(new_start, new_end, speech_seconds(new_start, new_end, regions))


def _model_path() -> Path:
    """silero-vad's sequence model inside its installed package (found without importing it)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise VadError("the silero-vad package is not installed: pip install silero-vad (a dia2-toolkit dependency)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / _MODEL_FILE
    if not path.is_file():
        raise VadError(f"silero-vad's model {path} is missing: reinstall it (pip install --force-reinstall silero-vad)")
    return path
