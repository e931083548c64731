"""One recording -> corpus rows: transcribe, cut into utterances, filter, align, Mimi-encode.

Per recording:
1. probe the header (unreadable and empty files stop here);
2. transcribe each speaker's stream chunk by chunk (a dialogue file: each channel, its speaker's
   words; otherwise the downmix), merge the words by time, and normalise them for --language
   (numbers spelled out, stray punctuation attached: `dia2.text.normalize`);
3. cut the words into utterances at pauses (`segment.py`), drop the ones that are too short or
   long, low in ASR confidence, or (with reference text) disagree with it;
4. align each utterance's words to frames with the shared rule (`dia2.text.utterance`: the
   lead-in silence and long pauses become break entries, as inference spells them), and take its
   audio up to the end-of-speech tail (spec section 7): N = end_of_speech_step + tail frames
   (`dia2.data.teacher.tail_frames`, derived from the decoder's stop rule), real audio up to the
   next utterance's first word, silence after that;
5. Mimi-encode the utterances as they come, in batches (of one on CPU, where batching does not
   pay), so a recording hours long never holds more than a batch of utterance audio.

Word times are stored as float32 in the corpus, so they are rounded to float32 before aligning:
the trainer, re-aligning the stored words, lands on exactly these frames.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Iterable, Iterator

import numpy as np
import torch

from data_prep.audio import Recording, db_to_level, mix, probe
from data_prep.config import PrepConfig
from data_prep.reference import check_reference
from data_prep.results import (
    CHANNELS,
    CLIPPED,
    EMPTY,
    LOW_CONFIDENCE,
    NO_SPEAKABLE_WORDS,
    NO_SPEECH,
    SILENT,
    TEXT_MISMATCH,
    TOO_LONG,
    TOO_SHORT,
    UNREADABLE,
    FileResult,
    Skip,
)
from data_prep.segment import span_seconds, split_utterances
from data_prep.sources import SourceFile
from data_prep.timing import StageTimer
from data_prep.transcribe import SegmentTranscriber, transcribe_stream
from dia2.audio.io import AudioFileError
from dia2.data.corpus import make_row
from dia2.text.normalize import normalize_transcript
from dia2.text.script import TextTokenIds, Tokenizer
from dia2.text.utterance import align_utterance
from dia2.text.words import SpokenWord

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Candidate:
    """An utterance that passed every filter: mono waveform [frames * samples_per_frame] and its row data."""

    waveform: np.ndarray
    frames: int
    words: tuple[SpokenWord, ...]
    start: float
    stop: float
    confidence: float


class RecordingPreparer:
    """Turns recordings into rows with one codec, tokenizer and transcriber (loaded once)."""

    def __init__(
        self,
        config: PrepConfig,
        codec,
        tokenizer: Tokenizer,
        ids: TextTokenIds,
        transcriber: SegmentTranscriber,
        speaker_names: tuple[str, ...],
        max_frames: int,
        tail_frames: int,
        timer: StageTimer | None = None,
    ) -> None:
        self.config, self.codec, self.tokenizer, self.ids = config, codec, tokenizer, ids
        self.transcriber, self.speaker_names, self.max_frames = transcriber, speaker_names, max_frames
        self.tail_frames = tail_frames  # audio frames kept from the end-of-speech step on
        self.timer = timer or StageTimer()

    def prepare(self, source: SourceFile) -> FileResult:
        """Every row of `source`, and every part of it left out with the reason. Never raises for bad audio."""
        result = FileResult(source.name)
        if not source.path.is_file():
            return _skip_file(result, UNREADABLE, f"{source.path} not found")
        if source.path.stat().st_size == 0:
            return _skip_file(result, EMPTY, "the file is 0 bytes long")
        try:
            info = probe(source.path)
        except AudioFileError as exc:
            return _skip_file(result, UNREADABLE, str(exc))
        if info.frames == 0:
            return _skip_file(result, EMPTY, f"{source.name} holds no audio samples")
        streams = self._streams(source, info.channels, result)
        if streams is None:
            return result
        try:
            with Recording(source.path) as recording:
                words = self._transcribe(recording, streams, info.seconds, result)
                if words:
                    candidates = self._candidates(recording, words, source, dialogue=len(streams) > 1, result=result)
                    result.rows = self._encode(candidates, source)
        except AudioFileError as exc:
            return _skip_file(result, UNREADABLE, str(exc))
        return result

    def _streams(self, source: SourceFile, channels: int, result: FileResult) -> list[tuple[int | None, int]] | None:
        """(channel or None for the downmix, speaker number) per stream to transcribe."""
        if len(source.speakers) == 1:
            return [(None, source.speakers[0])]
        if channels == 2:
            return [(0, source.speakers[0]), (1, source.speakers[1])]
        if channels == 1:
            note = f"one channel where a two-speaker dialogue was expected: all its speech is [S{source.speakers[0]}]"
            result.notes.append(note)
            return [(None, source.speakers[0])]
        _skip_file(result, CHANNELS, f"{channels} channels; a dialogue file needs 2 (one speaker per channel)")
        return None

    def _transcribe(
        self, recording: Recording, streams: list[tuple[int | None, int]], header_seconds: float, result: FileResult
    ) -> list[SpokenWord]:
        """Every stream's words merged by time; file-level skips (silent, no speech) go to `result`."""
        flt, chunk, progress = self.config.filters, self.config.asr.chunk_seconds, self.config.run.progress
        silence = db_to_level(flt.silence_db)
        heard = [
            transcribe_stream(recording, channel, speaker, self.transcriber, chunk, silence, progress, self.timer)
            for channel, speaker in streams
        ]
        result.seconds = recording.seconds
        if recording.truncated:
            result.notes.append(
                f"truncated: the header says {header_seconds:.2f} s but only {recording.seconds:.2f} s could be decoded"
            )
        if recording.nonfinite:
            result.notes.append("NaN or infinite samples, read as silence")
        if recording.seconds == 0:
            _skip_file(result, UNREADABLE, "no decodable audio")
            return []
        peak = max(h.peak for h in heard)
        if peak < silence:
            level = 20 * math.log10(peak) if peak > 0 else float("-inf")
            _skip_file(result, SILENT, f"peak level {level:.1f} dBFS is below --silence-db {flt.silence_db}")
            return []
        words = sorted((w for h in heard for w in h.words), key=lambda w: (w.start, w.end, w.speaker))
        # Numbers spelled out and stray punctuation attached, per --language (dia2.text.normalize).
        words = normalize_transcript(words, self.config.asr.language)
        if not words:
            _skip_file(result, NO_SPEECH, "the recogniser found no words")
        return words

    def _candidates(
        self, recording: Recording, words: list[SpokenWord], source: SourceFile, dialogue: bool, result: FileResult
    ) -> Iterator[_Candidate]:
        """The utterances that pass every filter, one at a time (skips go to `result`)."""
        with self.timer.stage("segment_align"):
            groups = split_utterances(words, self.config.segment)
            wers = None
            if source.text is not None:
                check = check_reference([[w.text for w in g] for g in groups], source.text, self.config.asr.language)
                result.wer = check.file_wer
                wers = check.utterance_wer
        for i, group in enumerate(groups):
            previous_end = max(w.end for w in groups[i - 1]) if i else 0.0
            next_start = groups[i + 1][0].start if i + 1 < len(groups) else recording.seconds
            wer = wers[i] if wers is not None else None
            candidate = self._candidate(recording, group, previous_end, next_start, dialogue, wer, source, result)
            if candidate is not None:
                yield candidate

    def _length_problem(self, group: list[SpokenWord]) -> tuple[str, str] | None:
        seg = self.config.segment
        seconds = span_seconds(group)
        if seconds < seg.min_seconds:
            return TOO_SHORT, f"{seconds:.2f} s of speech < --min-seconds {seg.min_seconds}"
        if seconds > seg.max_seconds:
            return TOO_LONG, f"{seconds:.2f} s without a pause > --max-seconds {seg.max_seconds}"
        return None

    def _text_problem(self, confidence: float, wer: float | None) -> tuple[str, str] | None:
        flt = self.config.filters
        if confidence < flt.min_confidence:
            return LOW_CONFIDENCE, f"mean word probability {confidence:.2f} < --min-confidence {flt.min_confidence}"
        if wer is not None and wer > flt.max_wer:
            return TEXT_MISMATCH, f"word error rate {wer:.2f} against the reference text > --max-wer {flt.max_wer}"
        return None

    def _candidate(
        self, recording: Recording, group: list[SpokenWord], previous_end: float, next_start: float,
        dialogue: bool, wer: float | None, source: SourceFile, result: FileResult,
    ) -> _Candidate | None:
        """The utterance's audio and words, or None (with the skip recorded). Objective checks
        (length, clipping) come before the recogniser's judgement (confidence, reference text)."""
        first, last_end = group[0].start, max(w.end for w in group)
        problem = self._length_problem(group)
        if problem is not None:
            result.skips.append(Skip(source.name, *problem, first, last_end))
            return None
        start = max(0.0, first - self.config.segment.lead_seconds, min(previous_end, first))
        words = tuple(replace(w, start=_f32(w.start - start), end=_f32(w.end - start)) for w in group)
        with self.timer.stage("segment_align"):
            try:
                utterance = align_utterance(words, self.tokenizer, self.ids)
            except ValueError as exc:
                result.skips.append(Skip(source.name, NO_SPEAKABLE_WORDS, str(exc), first, last_end))
                return None
        frames = utterance.alignment.end_of_speech_step + self.tail_frames
        if frames > self.max_frames:
            detail = f"{frames} frames after alignment > the {self.max_frames} the context leaves for an utterance"
            result.skips.append(Skip(source.name, TOO_LONG, detail, first, last_end))
            return None
        rate, per_frame = self.codec.sample_rate, self.codec.samples_per_frame
        # Real audio up to the next utterance's first word; silence pads the rest of the tail.
        stop = min(start + frames * per_frame / rate, max(next_start, last_end), recording.seconds)
        with self.timer.stage("read"):
            span = recording.read_span(start, stop, rate)
        confidence = float(np.mean([w.probability for w in group]))
        if span.clipped > self.config.filters.max_clipped:
            detail = f"{span.clipped:.2%} of samples at full scale > --max-clipped {self.config.filters.max_clipped}"
            problem = CLIPPED, detail
        else:
            problem = self._text_problem(confidence, wer)
        if problem is not None:
            result.skips.append(Skip(source.name, *problem, first, last_end))
            return None
        waveform = np.zeros(frames * per_frame, np.float32)
        mono = mix(span.samples, dialogue)[: len(waveform)]
        waveform[: len(mono)] = mono
        return _Candidate(waveform, frames, words, start, stop, confidence)

    def _encode(self, candidates: Iterable[_Candidate], source: SourceFile) -> list[dict]:
        """Rows in spoken order. Candidates are encoded as they come, a batch at a time, so a
        long recording never holds more than one batch of utterance audio."""
        size = self.config.model.encode_batch_size or (16 if self.codec.device.type == "cuda" else 1)
        rows: list[dict] = []
        batch: list[_Candidate] = []
        for candidate in candidates:
            batch.append(candidate)
            if len(batch) == size:
                rows += self._encode_batch(batch, source)
                batch = []
        if batch:
            rows += self._encode_batch(batch, source)
        return rows

    def _encode_batch(self, batch: list[_Candidate], source: SourceFile) -> list[dict]:
        with self.timer.stage("encode"):
            # Zero-padding at the end leaves earlier frames alone: Mimi's encoder is causal.
            wave = np.zeros((len(batch), max(c.waveform.shape[0] for c in batch)), np.float32)
            for row, c in enumerate(batch):
                wave[row, : c.waveform.shape[0]] = c.waveform
            encoded = self.codec.encode(torch.from_numpy(wave)).cpu()
        return [
            make_row(encoded[row, :, : c.frames], c.words, self.speaker_names, source.name, c.start, c.stop, c.confidence)
            for row, c in enumerate(batch)
        ]


def _skip_file(result: FileResult, reason: str, detail: str) -> FileResult:
    result.skips.append(Skip(result.source, reason, detail))
    return result


def _f32(seconds: float) -> float:
    """The float32 value the corpus will store, as a Python float."""
    return float(np.float32(seconds))
