"""Speech -> timed, scored words over recordings of any length, with the shared Whisper wrapper.

`asr_transcriber` builds `dia2.audio.asr.WhisperTranscriber` (the faster-whisper wrapper voice
prefixes use too) from the `--asr-*` options. `transcribe_stream` walks a recording in chunks:
each chunk's last Whisper segment, which may run into the next chunk, is dropped and transcribed
again at the start of the next one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from data_prep.audio import Recording
from data_prep.config import AsrOptions
from data_prep.timing import StageTimer
from dia2.audio.asr import WHISPER_RATE, WhisperTranscriber
from dia2.text.words import SpokenWord

logger = logging.getLogger(__name__)

_RESTART_BEFORE = 0.2  # seconds of audio before a dropped segment's first word that the next chunk re-reads
_MIN_ADVANCE = 5.0  # a chunk whose only cut would advance less than this keeps all its words


class SegmentTranscriber(Protocol):
    """What data prep needs from a recogniser; tests bring scripted ones."""

    identity: str  # what produced the words (model and settings), for the cache key and corpus meta

    def transcribe_segments(self, waveform: np.ndarray, sample_rate: int) -> list[list[SpokenWord]]:
        """Mono waveform [S] -> Whisper segments (sentence-like runs) of words, seconds from its start."""
        ...


def asr_transcriber(options: AsrOptions, cpu_threads: int = 0) -> WhisperTranscriber:
    """The Whisper wrapper with data prep's options; a model that cannot load names --asr-model."""
    return WhisperTranscriber(
        options.asr_model, device=options.asr_device, compute_type=options.compute_type, language=options.language,
        beam_size=options.beam_size, batch_size=options.asr_batch_size, cpu_threads=cpu_threads,
        model_option="--asr-model", device_option="--asr-device",
    )


@dataclass(frozen=True)
class StreamWords:
    """Words of one channel (or the downmix) of a recording, seconds from its start; and the
    loudest sample level seen."""

    words: list[SpokenWord]
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
    words: list[SpokenWord] = []
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
            words += [replace(w, start=pos + min(w.start, span), end=pos + min(w.end, span), speaker=speaker) for w in kept]
        bar.update(round(advance) - bar.n)
        pos = advance
    bar.close()
    return StreamWords(words, peak)


def _stitch(segments: list[list[SpokenWord]], pos: float, stop: float, final: bool) -> tuple[list[SpokenWord], float]:
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
