"""One recording -> corpus rows: transcribe, cut into utterances, filter, align, Mimi-encode.

Per recording:
1. open its first audio stream (any container: `data_prep.audio`; unreadable files, videos without
   sound and empty files stop here) and analyse it in one pass (`data_prep.analysis`): its exact
   length, speech regions (silero-vad), DNSMOS windows and, with --diarize, who speaks when;
2. transcribe each speaker's stream chunk by chunk (a stereo dialogue: each channel, its speaker's
   words; otherwise the downmix), merge the words by time, and normalise them for --language
   (numbers spelled out, stray punctuation attached: `dia2.text.normalize`); with --diarize, each
   word takes the speaker of its turn, and speech cut out as overlap breaks the utterances;
3. cut the words into utterances at pauses (`segment.py`), drop the ones that are too short or
   long, low in ASR confidence, or (with reference text) disagree with it;
4. with VAD, move each cut's start out of speech to `--vad-pad` before it, and refuse cuts whose
   speech runs into a neighbour's (or that hold no speech);
5. align each utterance's words to frames with the shared rule (`dia2.text.utterance`: the
   lead-in silence and long pauses become break entries, as inference spells them), and take its
   audio up to the end-of-speech tail (spec section 7): N = end_of_speech_step + tail frames
   (`dia2.data.teacher.tail_frames`, derived from the decoder's stop rule), real audio up to the
   next utterance's first word (with VAD: up to `--vad-pad` after its own last speech), silence
   after that; drop it when clipped or below --min-dnsmos (its DNSMOS windows' score), and bring
   it to --loudness-target (`data_prep.loudness`);
6. Mimi-encode the utterances as they come, in batches (of one on CPU, where batching does not
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

from data_prep.analysis import (
    Analysis,
    AnalysisModels,
    CutLevels,
    RecordingAnalyzer,
    attribute_speakers,
    recording_figures,
    recording_flags,
)
from data_prep.audio import Recording, db_to_level, mix
from data_prep.config import PrepConfig
from data_prep.loudness import normalize_loudness
from data_prep.quality import LOW_QUALITY, quality_problem
from data_prep.reference import check_reference
from data_prep.results import (
    CHANNELS,
    CLIPPED,
    EMPTY,
    LOW_CONFIDENCE,
    NO_AUDIO_STREAM,
    NO_SPEAKABLE_WORDS,
    NO_SPEECH,
    NOT_DIARIZED,
    SILENT,
    SPEECH_AT_END,
    TEXT_MISMATCH,
    TOO_LONG,
    TOO_SHORT,
    UNREADABLE,
    FileResult,
    Skip,
)
from data_prep.segment import span_seconds, split_utterances
from data_prep.sources import SourceFile
from data_prep.speaker_clusters import TooFewVoicesError
from data_prep.timing import StageTimer
from data_prep.transcribe import SegmentTranscriber, transcribe_stream
from data_prep.vad import refine_cut, speech_fraction
from dia2.audio.io import AudioFileError, NoAudioError
from dia2.data.corpus import make_row
from dia2.text.normalize import normalize_transcript
from dia2.text.script import TextTokenIds, Tokenizer
from dia2.text.utterance import align_utterance
from dia2.text.words import SpokenWord

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Candidate:
    """An utterance that passed every filter: mono waveform [frames * samples_per_frame], its row
    data and what was measured of its audio (`dia2.data.corpus.CUT_FIGURES`)."""

    waveform: np.ndarray
    frames: int
    words: tuple[SpokenWord, ...]
    start: float
    stop: float
    confidence: float
    figures: dict[str, float | None]


class RecordingPreparer:
    """Turns recordings into rows with one codec, tokenizer, transcriber and analysis models (loaded once)."""

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
        models: AnalysisModels | None = None,
    ) -> None:
        self.config, self.codec, self.tokenizer, self.ids = config, codec, tokenizer, ids
        self.transcriber, self.speaker_names, self.max_frames = transcriber, speaker_names, max_frames
        self.tail_frames = tail_frames  # audio frames kept from the end-of-speech step on
        self.timer = timer or StageTimer()
        self.analyzer = RecordingAnalyzer(config, models or AnalysisModels(None, None, None), self.timer)

    def prepare(self, source: SourceFile) -> FileResult:
        """Every row of `source`, and every part of it left out with the reason. Never raises for bad
        audio; an enrollment clip that names no voice in it (a DiarizeError) stops the run."""
        result = FileResult(source.name)
        if not source.path.is_file():
            return _skip_file(result, UNREADABLE, f"{source.path} not found")
        if source.path.stat().st_size == 0:
            return _skip_file(result, EMPTY, "the file is 0 bytes long")
        try:
            recording = Recording(source.path)
        except NoAudioError as exc:
            return _skip_file(result, NO_AUDIO_STREAM, str(exc))
        except AudioFileError as exc:
            return _skip_file(result, UNREADABLE, str(exc))
        streams = self._streams(source, recording.info.channels, result)
        if streams is None:
            return result
        try:
            with recording:
                analysis = self.analyzer.analyse(recording, source.name, self.speaker_names)
                result.figures = recording_figures(recording, analysis)
                if not self._readable(recording, result):
                    return result
                words = self._transcribe(recording, streams, result)
                if words:
                    levels = CutLevels()
                    candidates = self._candidates(recording, words, analysis, source, len(streams) > 1, result, levels)
                    result.rows = self._encode(candidates, source)
                    result.figures["loudness"] = levels.figures()
                result.figures["flags"] = recording_flags(result.figures, self.config)
        except NoAudioError as exc:
            return _skip_file(result, EMPTY, str(exc))
        except TooFewVoicesError as exc:
            return _skip_file(result, NOT_DIARIZED, str(exc))
        except AudioFileError as exc:
            return _skip_file(result, UNREADABLE, str(exc))
        return result

    def _streams(self, source: SourceFile, channels: int, result: FileResult) -> list[tuple[int | None, int]] | None:
        """(channel or None for the downmix, speaker number) per stream to transcribe."""
        if len(source.speakers) == 1 or self.config.speaker.diarize:
            return [(None, source.speakers[0])]  # with --diarize, each word gets its speaker from the voices
        if channels == 2:
            return [(0, source.speakers[0]), (1, source.speakers[1])]
        if channels == 1:
            note = f"one channel where a two-speaker dialogue was expected: all its speech is [S{source.speakers[0]}]"
            result.notes.append(note)
            return [(None, source.speakers[0])]
        _skip_file(result, CHANNELS, f"{channels} channels; a dialogue file needs 2 (one speaker per channel)")
        return None

    def _readable(self, recording: Recording, result: FileResult) -> bool:
        """Note what the analysis pass found wrong with the file; False when it holds no audio."""
        result.seconds = recording.seconds
        if recording.truncated:
            result.notes.append(
                f"truncated: the header says {recording.info.seconds:.2f} s but only {recording.seconds:.2f} s could be decoded"
            )
        if recording.nonfinite:
            result.notes.append("NaN or infinite samples, read as silence")
        if recording.seconds == 0:
            _skip_file(result, EMPTY, f"{result.source} holds no audio samples")
            return False
        return True

    def _transcribe(self, recording: Recording, streams: list[tuple[int | None, int]], result: FileResult) -> list[SpokenWord]:
        """Every stream's words merged by time; file-level skips (silent, no speech) go to `result`."""
        flt, chunk, progress = self.config.filters, self.config.asr.chunk_seconds, self.config.run.progress
        silence = db_to_level(flt.silence_db)
        heard = [
            transcribe_stream(recording, channel, speaker, self.transcriber, chunk, silence, progress, self.timer)
            for channel, speaker in streams
        ]
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

    def _utterances(
        self, words: list[SpokenWord], analysis: Analysis, source: SourceFile, result: FileResult
    ) -> tuple[list[list[SpokenWord]], list[tuple[float, float]]]:
        """The words cut into utterances, and the spans no cut may cross (speech cut out by the diarisation)."""
        runs, barriers = [words], []
        if analysis.diarization is not None:
            runs, barriers, cut_out = attribute_speakers(words, analysis.diarization, self.speaker_names, source.name)
            result.skips += cut_out
        return [group for run in runs for group in split_utterances(run, self.config.segment)], barriers

    def _candidates(
        self, recording: Recording, words: list[SpokenWord], analysis: Analysis, source: SourceFile, dialogue: bool,
        result: FileResult, levels: CutLevels,
    ) -> Iterator[_Candidate]:
        """The utterances that pass every filter, one at a time (skips go to `result`)."""
        with self.timer.stage("segment_align"):
            groups, barriers = self._utterances(words, analysis, source, result)
            wers = None
            if source.text is not None:
                check = check_reference([[w.text for w in g] for g in groups], source.text, self.config.asr.language)
                result.wer = check.file_wer
                wers = check.utterance_wer
        for i, group in enumerate(groups):
            first, last_end = group[0].start, max(w.end for w in group)
            previous_end = max([max(w.end for w in groups[i - 1]) if i else 0.0]
                               + [min(b_end, first) for b_start, b_end in barriers if b_start < first])
            next_start = min([groups[i + 1][0].start if i + 1 < len(groups) else recording.seconds]
                             + [max(b_start, last_end) for b_start, b_end in barriers if b_end > last_end])
            wer = wers[i] if wers is not None else None
            candidate = self._candidate(recording, group, (previous_end, next_start), analysis, dialogue, wer, source, result, levels)
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

    def _bounds(
        self, group: list[SpokenWord], room: tuple[float, float], analysis: Analysis
    ) -> tuple[float, float, tuple[str, str] | None]:
        """Where the cut's audio starts and how far its real audio may run (seconds), and the
        problem that refuses the cut (None: none).

        Without VAD: --lead-seconds before the first word, up to the next utterance. With VAD: the
        speech around the words, --vad-pad of silence on each side, within the room the
        neighbouring utterances (and speech cut out) leave."""
        first, last_end = group[0].start, max(w.end for w in group)
        previous_end, next_start = room
        if analysis.regions is None:
            return max(0.0, first - self.config.segment.lead_seconds, min(previous_end, first)), max(next_start, last_end), None
        lo, hi = min(previous_end, first), max(next_start, last_end)
        refined = refine_cut(first, last_end, analysis.regions, self.config.vad, lo=lo, hi=hi)
        problem = None if refined.reason is None else (refined.reason, f"silero-vad: {refined.reason} of the words {first:.2f}-{last_end:.2f} s")
        return refined.start, refined.end, problem

    def _candidate(
        self, recording: Recording, group: list[SpokenWord], room: tuple[float, float], analysis: Analysis,
        dialogue: bool, wer: float | None, source: SourceFile, result: FileResult, levels: CutLevels,
    ) -> _Candidate | None:
        """The utterance's audio and words, or None (with the skip recorded). Objective checks
        (length, speech, clipping, quality) come before the recogniser's judgement (confidence, reference text)."""
        first, last_end = group[0].start, max(w.end for w in group)

        def skip(problem: tuple[str, str]) -> None:
            result.skips.append(Skip(source.name, *problem, first, last_end))

        problem = self._length_problem(group)
        if problem is None:
            start, audio_end, problem = self._bounds(group, room, analysis)
        if problem is not None:
            return skip(problem)
        # A word Whisper starts before the cut (silero heard its speech start later: Whisper's first
        # word times run early, e.g. 0.2 s on the -40 LUFS fixture) starts with the cut.
        words = tuple(replace(w, start=_f32(max(w.start, start) - start), end=_f32(max(w.end, start) - start)) for w in group)
        with self.timer.stage("segment_align"):
            try:
                utterance = align_utterance(words, self.tokenizer, self.ids)
            except ValueError as exc:
                return skip((NO_SPEAKABLE_WORDS, str(exc)))
        frames = utterance.alignment.end_of_speech_step + self.tail_frames
        if frames > self.max_frames:
            return skip((TOO_LONG, f"{frames} frames after alignment > the {self.max_frames} the context leaves for an utterance"))
        rate, per_frame = self.codec.sample_rate, self.codec.samples_per_frame
        row_end = start + frames * per_frame / rate
        if analysis.regions is not None and _last_speech(analysis, start, audio_end) > row_end:
            return skip((SPEECH_AT_END, f"speech runs past the row's end-of-speech tail at {row_end:.2f} s"))
        # Real audio up to the next utterance's first word (with VAD: its own speech and pad); silence pads the rest of the tail.
        stop = min(row_end, audio_end, recording.seconds)
        with self.timer.stage("read"):
            span = recording.read_span(start, stop, rate)
        confidence = float(np.mean([w.probability for w in group]))
        score = analysis.quality.over(start, stop) if analysis.quality is not None else None
        if span.clipped > self.config.filters.max_clipped:
            problem = CLIPPED, f"{span.clipped:.2%} of samples at full scale > --max-clipped {self.config.filters.max_clipped}"
        elif score is not None and (low := quality_problem(score, self.config.quality)) is not None:
            problem = LOW_QUALITY, low
        else:
            problem = self._text_problem(confidence, wer)
        if problem is not None:
            return skip(problem)
        waveform = np.zeros(frames * per_frame, np.float32)
        mono, figures = self._level(mix(span.samples, dialogue)[: len(waveform)], rate, levels)
        waveform[: len(mono)] = mono
        if analysis.regions is not None:
            figures["speech_fraction"] = speech_fraction(start, stop, analysis.regions)
        if score is not None:
            figures |= {"dnsmos_sig": score.sig, "dnsmos_bak": score.bak, "dnsmos_ovrl": score.ovrl}
        return _Candidate(waveform, frames, words, start, stop, confidence, figures)

    def _level(self, mono: np.ndarray, rate: int, levels: CutLevels) -> tuple[np.ndarray, dict[str, float | None]]:
        """The cut [S] at --loudness-target (as recorded with --no-loudness), and the gain applied."""
        if not self.config.loudness.loudness:
            return mono, {}
        with self.timer.stage("loudness"):
            level = normalize_loudness(mono, rate, self.config.loudness)
        levels.results.append(level)
        return level.waveform, {"gain_db": level.gain_db if math.isfinite(level.input_lufs) else 0.0}

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
            make_row(encoded[row, :, : c.frames], c.words, self.speaker_names, source.name, c.start, c.stop, c.confidence,
                     figures=c.figures)
            for row, c in enumerate(batch)
        ]


def _last_speech(analysis: Analysis, start: float, end: float) -> float:
    """The end of the last speech in [start, end) (seconds; `start` when there is none)."""
    return max([min(r.end, end) for r in analysis.regions or () if r.start < end and r.end > start], default=start)


def _skip_file(result: FileResult, reason: str, detail: str) -> FileResult:
    result.skips.append(Skip(result.source, reason, detail))
    return result


def _f32(seconds: float) -> float:
    """The float32 value the corpus will store, as a Python float."""
    return float(np.float32(seconds))
