"""Speech -> timed, scored words: faster-whisper with word timestamps, over recordings of any length.

`WhisperAsr` wraps faster-whisper directly (the runtime's `dia2.generation.voice.WhisperTranscriber` has
no word probabilities, beam or batching options); it also satisfies the runtime's `Transcriber`
protocol. It decodes at temperature 0 only: the fallback to sampling at higher temperatures
re-decodes a window up to five more times (it made tiny.en 6x slower on espeak-ng speech) and is
not reproducible, while what it would rescue is what the confidence filter drops anyway.

`transcribe_stream` walks a recording in chunks: each chunk's last Whisper segment, which may
run into the next chunk, is dropped and transcribed again at the start of the next one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from data_prep.audio import Recording
from data_prep.config import AsrOptions
from data_prep.timing import StageTimer
from dia2.errors import Dia2Error
from dia2.generation.voice import Word

logger = logging.getLogger(__name__)

WHISPER_RATE = 16000
_RESTART_BEFORE = 0.2  # seconds of audio before a dropped segment's first word that the next chunk re-reads
_MIN_ADVANCE = 5.0  # a chunk whose only cut would advance less than this keeps all its words


class AsrError(Dia2Error, RuntimeError):
    """The speech recogniser cannot be loaded; the message names the model and the fix."""


@dataclass(frozen=True)
class HeardWord:
    """A recognised word: text, span in seconds, Whisper's probability for it, speaker 1 or 2."""

    text: str
    start: float
    end: float
    probability: float
    speaker: int = 1


class SegmentTranscriber(Protocol):
    """What data prep needs from a recogniser; tests bring scripted ones."""

    identity: str  # what produced the words (model and settings), for the cache key and corpus meta

    def transcribe_segments(self, waveform: np.ndarray, sample_rate: int) -> list[list[HeardWord]]:
        """Mono waveform [S] -> Whisper segments (sentence-like runs) of words, seconds from its start."""
        ...


class WhisperAsr:
    """faster-whisper, word timestamps on; batched on GPU (`BatchedInferencePipeline`)."""

    def __init__(self, options: AsrOptions, cpu_threads: int = 0) -> None:
        self.options = options
        self.device = _auto_device(options.asr_device)
        on_gpu = self.device.startswith("cuda")
        self.compute_type = options.compute_type if options.compute_type != "auto" else ("float16" if on_gpu else "int8")
        batch = options.asr_batch_size or (16 if self.device.startswith("cuda") else 1)
        self.batch_size = batch if batch > 1 else 0
        self.cpu_threads = cpu_threads
        self._model = None
        self._pipeline = None

    @property
    def identity(self) -> str:
        o = self.options
        return (
            f"faster-whisper:{_model_id(o.asr_model)};compute={self.compute_type};lang={o.language or 'auto'};"
            f"beam={o.beam_size};batched={bool(self.batch_size)}"
        )

    def load(self):
        """Load the model now (it is otherwise loaded on first use); AsrError if it cannot be."""
        if self._model is None:
            from faster_whisper import BatchedInferencePipeline, WhisperModel

            device, _, index = self.device.partition(":")
            try:
                self._model = WhisperModel(
                    self.options.asr_model, device=device, device_index=int(index or 0),
                    compute_type=self.compute_type, cpu_threads=self.cpu_threads,
                )
            except Exception as exc:  # faster-whisper raises many kinds; one clear message for all
                raise AsrError(
                    f"cannot load the Whisper model '{self.options.asr_model}' ({type(exc).__name__}: {exc}); pass "
                    "--asr-model with a local CTranslate2 model folder, or a model name that is cached or downloadable"
                ) from exc
            if self.batch_size:
                self._pipeline = BatchedInferencePipeline(self._model)
        return self._pipeline or self._model

    def transcribe_segments(self, waveform: np.ndarray, sample_rate: int) -> list[list[HeardWord]]:
        from dia2.audio.io import resample

        audio = resample(waveform, sample_rate, WHISPER_RATE)
        o = self.options
        kwargs = dict(
            language=o.language, beam_size=o.beam_size, word_timestamps=True, temperature=0.0,
            condition_on_previous_text=False,  # a misheard window must not prime the next one
        )
        if self.batch_size:
            kwargs["batch_size"] = self.batch_size
        segments, _ = self.load().transcribe(audio, **kwargs)
        out = []
        for segment in segments:
            words = [
                HeardWord(w.word.strip(), float(w.start), float(w.end), float(w.probability))
                for w in segment.words or []
                if w.word.strip()
            ]
            if words:
                out.append(words)
        return out

    def transcribe(self, waveform: np.ndarray, sample_rate: int) -> list[Word]:
        """The runtime's `Transcriber` protocol (voice prefixes)."""
        return [Word(w.text, w.start, w.end) for seg in self.transcribe_segments(waveform, sample_rate) for w in seg]


def _auto_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _model_id(model: str) -> str:
    """A model name as is; a local folder as its path plus its weights' size and time, so a
    different model copied to the same path is told apart."""
    path = Path(model).expanduser()
    weights = path / "model.bin"
    if weights.is_file():
        stat = weights.stat()
        return f"{path.resolve()}@{stat.st_size}:{stat.st_mtime_ns}"
    return model


@dataclass(frozen=True)
class StreamWords:
    """Words of one channel (or the downmix) of a recording, seconds from its start; and the
    loudest sample level seen."""

    words: list[HeardWord]
    peak: float


def transcribe_stream(
    recording: Recording,
    channel: int | None,
    speaker: int,
    transcriber: SegmentTranscriber,
    chunk_seconds: float,
    silence_level: float,
    progress: bool = False,
    timer: StageTimer | None = None,
) -> StreamWords:
    """Transcribe channel `channel` (None: all channels averaged) chunk by chunk.

    Chunks whose peak stays below `silence_level` are not transcribed (Whisper invents words in
    silence). Every word gets `speaker`.
    """
    timer = timer or StageTimer()
    words: list[HeardWord] = []
    peak, pos = 0.0, 0.0
    bar = tqdm(total=round(recording.seconds), unit="s", desc=recording.path.name, leave=False,
               disable=not progress or recording.seconds <= chunk_seconds)
    while pos < recording.seconds:
        stop = min(pos + chunk_seconds, recording.seconds)
        with timer.stage("read"):
            span = recording.read_span(pos, stop, WHISPER_RATE)
        stop = min(stop, recording.seconds)  # the read may have found the file shorter
        signal = span.samples[channel] if channel is not None else span.samples.mean(axis=0)
        signal = signal[: int(round((stop - pos) * WHISPER_RATE))]
        level = float(np.abs(signal).max()) if signal.size else 0.0
        peak = max(peak, level)
        advance = stop
        if level >= silence_level:
            with timer.stage("transcribe"):
                segments = transcriber.transcribe_segments(signal, WHISPER_RATE)
            kept, advance = _stitch(segments, pos, stop, final=stop >= recording.seconds)
            span = stop - pos  # Whisper may place a last word's end past the audio it was given
            words += [HeardWord(w.text, pos + min(w.start, span), pos + min(w.end, span), w.probability, speaker) for w in kept]
        bar.update(round(advance) - bar.n)
        pos = advance
    bar.close()
    return StreamWords(words, peak)


def _stitch(segments: list[list[HeardWord]], pos: float, stop: float, final: bool) -> tuple[list[HeardWord], float]:
    """The words to keep from a chunk starting at `pos`, and where the next chunk starts.

    Unless the chunk is the last, its last segment may be cut off by the chunk's end: drop it and
    start the next chunk just before its first word.
    """
    if final or len(segments) < 2:
        return [w for seg in segments for w in seg], stop
    kept = [w for seg in segments[:-1] for w in seg]
    cut = segments[-1][0].start
    if cut < _MIN_ADVANCE:
        return [w for seg in segments for w in seg], stop
    kept_end = max(w.end for w in kept)
    return kept, pos + max(kept_end, cut - _RESTART_BEFORE)
