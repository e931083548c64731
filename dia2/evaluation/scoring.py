"""One clip's scores: intelligibility, speaker similarity and behaviour.

    scorer = ClipScorer(references=[wave_a, wave_b], asr="tiny.en")
    scores = scorer.score(result.waveform, result.sample_rate, "[S1] Hello there.",
                          timestamps=result.timestamps, hit_frame_limit=result.truncated)

- intelligibility: WER and CER of what faster-whisper hears against the script's words
  (`dia2.evaluation.text`), None without a recogniser;
- similarity: cosine between the clip's speaker embedding and the references' voice
  (`dia2.evaluation.speaker`), None without references or encoder, or for a clip without speech;
- quality: DNSMOS P.835 OVRL (`dia2.audio.dnsmos`, the reference's 1 s hop), 1-5, how clean the
  speech sounds without a reference to compare with (the references' own score is the topline),
  None unless asked for or for a silent clip;
- behaviour: duration against the expected speaking rate, leading/trailing silence, whether the
  generation hit its frame limit instead of ending, and the share of the script's words that
  started inside the clip (from the generation's word timestamps).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dia2.audio.asr import (
    DEFAULT_WHISPER_MODEL,
    WHISPER_RATE,
    Transcriber,
    WhisperTranscriber,
)
from dia2.audio.dnsmos import DnsmosError, DnsmosScorer
from dia2.audio.io import resample
from dia2.evaluation.speaker import (
    DEFAULT_SPEAKER_ENCODER,
    SpeakerEncoder,
    cosine,
    speaker_encoder,
    voice_embedding,
)
from dia2.evaluation.text import (
    char_error_rate,
    normalize_words,
    spoken_text,
    word_error_rate,
)
from dia2.model.config import SAMPLE_RATE
from dia2.text.script import EXPECTED_WORDS_PER_SECOND
from dia2.text.words import SpokenWord

SILENCE_WINDOW_S = 0.02
"""Window over which loudness is measured to find where speech starts and ends."""
SILENCE_BELOW_PEAK_DB = 40.0
"""A window this far below the clip's loudest window counts as silence."""
SILENCE_FLOOR = 1e-3
"""RMS under which a window is silence whatever the clip's peak (-60 dBFS), so a silent clip is silent."""
MIN_ASR_SECONDS = 0.1
"""Shorter clips are not sent to the recogniser: it is heard as nothing."""
ASR_OPTION = "--asr-model (Python: ClipScorer(asr=...))"
MAX_TOKENS_PER_SECOND = 8
"""Most tokens the recogniser may write per second of clip (speech takes 3-4): on noise Whisper
can loop on one phrase until its window is full, 10 s of decoding for a 2 s clip."""
WHISPER_WINDOW_S = 30
WHISPER_MAX_NEW_TOKENS = 440
"""Whisper's 448-token window, less its start-of-transcript prompt."""


class ClipTranscriber(WhisperTranscriber):
    """faster-whisper as scoring needs it: the words only (no word timings, which cost a second
    alignment pass), with the tokens per window bounded by the clip's length."""

    def transcribe(self, waveform: np.ndarray, sample_rate: int) -> list[SpokenWord]:
        audio = resample(waveform, sample_rate, WHISPER_RATE)
        seconds = min(len(audio) / WHISPER_RATE, WHISPER_WINDOW_S)
        limit = min(WHISPER_MAX_NEW_TOKENS, math.ceil(seconds * MAX_TOKENS_PER_SECOND) + 8)
        segments, _ = self.load().transcribe(
            audio, language=self.language, beam_size=self.beam_size, temperature=0.0, without_timestamps=True,
            condition_on_previous_text=False, max_new_tokens=limit,
        )
        return [SpokenWord(w, s.start, s.end) for s in segments for w in s.text.split()]


@dataclass(frozen=True)
class ClipScores:
    """Scores of one clip; None where a scorer was off or had nothing to measure."""

    wer: float | None
    """Word error rate of the recognised words against the script's (normalised)."""
    cer: float | None
    """Character error rate, same texts."""
    similarity: float | None
    """Cosine between the clip's speaker embedding and the references' voice."""
    dnsmos: float | None
    """DNSMOS P.835 OVRL of the clip (1-5): speech quality without a reference."""
    transcript: str | None
    """What the recogniser heard."""
    duration_s: float
    """Length of the clip."""
    expected_duration_s: float
    """The script's words at EXPECTED_WORDS_PER_SECOND."""
    leading_silence_s: float
    """Silence before the first sound (the whole clip when it is silent)."""
    trailing_silence_s: float
    """Silence after the last sound (the whole clip when it is silent)."""
    hit_frame_limit: bool
    """The generation ran to its frame limit instead of ending."""
    word_coverage: float | None
    """Share of the script's words that started inside the clip (None: no timestamps given)."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def duration_ratio(self) -> float | None:
        """Duration over expected duration (None for a script without words)."""
        return self.duration_s / self.expected_duration_s if self.expected_duration_s > 0 else None


class ClipScorer:
    """Scores clips against the script they speak and the recordings of the target voice.

    references: mono float32 waveforms [S] of the target voice at `reference_rate` (None or
    empty: no similarity). asr: a faster-whisper model name or folder, or a `Transcriber`
    (None: no WER/CER). speaker: "resemblyzer", a `SpeakerEncoder`, or None (no similarity).
    dnsmos: True (or a `DnsmosScorer`) to score each clip's DNSMOS OVRL.
    language: what the clips speak (a Whisper code; None: detected): the recogniser is told it and
    WER/CER normalise for it (numbers spelled out in it, `dia2.evaluation.text`).
    The references are embedded here, so the encoder loads once, before the first clip.
    """

    def __init__(
        self,
        references: Sequence[np.ndarray] | None = None,
        *,
        reference_rate: int = SAMPLE_RATE,
        asr: str | Transcriber | None = DEFAULT_WHISPER_MODEL,
        speaker: str | SpeakerEncoder | None = DEFAULT_SPEAKER_ENCODER,
        device: str = "cpu",
        language: str | None = None,
        dnsmos: bool | DnsmosScorer = False,
    ) -> None:
        self.quality = DnsmosScorer() if dnsmos is True else (dnsmos or None)
        if isinstance(asr, str):
            asr = ClipTranscriber(asr, device=device, model_option=ASR_OPTION, language=language)
        self.transcriber: Transcriber | None = asr
        self.language = language
        references = list(references) if references is not None else []
        encoder = speaker_encoder(speaker, device)  # an unknown name is refused even without references
        self.encoder = encoder if references else None
        embedded = [self.encoder.embed(r, reference_rate) for r in references] if self.encoder else []
        # None marks a reference without speech: it stays in place so leave_out indices hold.
        self.reference_embeddings: list[np.ndarray | None] = embedded
        self.voice = voice_embedding([e for e in embedded if e is not None])
        self.seconds = {"asr": 0.0, "speaker": 0.0, "dnsmos": 0.0, "behaviour": 0.0}
        """Time spent per scorer so far (the benchmark's and the report's figures)."""

    def score(
        self,
        waveform: np.ndarray,
        sample_rate: int,
        text: str,
        *,
        timestamps: Sequence[tuple[str, float]] | None = None,
        hit_frame_limit: bool = False,
        leave_out: int | None = None,
    ) -> ClipScores:
        """Scores of a mono waveform [S] that speaks `text` (a Dia2 script or plain text).

        timestamps: the (word, start seconds) the generation reported; None when there are none
        to judge (a recording), which leaves word_coverage None. leave_out: the index of a
        reference this clip is (or was made from), kept out of the voice it is compared with.
        """
        waveform = np.asarray(waveform, dtype=np.float32)
        said = spoken_text(text)
        duration = len(waveform) / sample_rate
        transcript = wer = cer = None
        started = time.perf_counter()
        if self.transcriber is not None:
            heard = self.transcriber.transcribe(waveform, sample_rate) if duration >= MIN_ASR_SECONDS else []
            transcript = " ".join(w.text for w in heard)
            wer, cer = word_error_rate(said, transcript, self.language), char_error_rate(said, transcript, self.language)
        self.seconds["asr"] += time.perf_counter() - started
        started = time.perf_counter()
        similarity = self.similarity(waveform, sample_rate, leave_out)
        self.seconds["speaker"] += time.perf_counter() - started
        started = time.perf_counter()
        dnsmos = self.dnsmos(waveform, sample_rate)
        self.seconds["dnsmos"] += time.perf_counter() - started
        started = time.perf_counter()
        leading, trailing = silences(waveform, sample_rate)
        words = len(normalize_words(said))
        coverage = None
        if timestamps is not None:
            inside = sum(1 for _, start in timestamps if start < duration)
            coverage = min(1.0, inside / words) if words else None
        self.seconds["behaviour"] += time.perf_counter() - started
        return ClipScores(
            wer=wer, cer=cer, similarity=similarity, dnsmos=dnsmos, transcript=transcript,
            duration_s=duration, expected_duration_s=words / EXPECTED_WORDS_PER_SECOND,
            leading_silence_s=leading, trailing_silence_s=trailing, hit_frame_limit=hit_frame_limit,
            word_coverage=coverage,
        )

    def dnsmos(self, waveform: np.ndarray, sample_rate: int) -> float | None:
        """The clip's DNSMOS OVRL (None when not asked for, or for a silent clip)."""
        if self.quality is None:
            return None
        try:
            return self.quality.score(waveform, sample_rate).ovrl
        except DnsmosError:
            return None

    def similarity(self, waveform: np.ndarray, sample_rate: int, leave_out: int | None = None) -> float | None:
        """Cosine of the clip's embedding with the references' voice (without reference `leave_out`)."""
        if self.encoder is None:
            return None
        voice = self.voice
        if leave_out is not None:
            others = [e for i, e in enumerate(self.reference_embeddings) if i != leave_out and e is not None]
            voice = voice_embedding(others)
        if voice is None:
            return None
        embedding = self.encoder.embed(waveform, sample_rate)
        return None if embedding is None else cosine(embedding, voice)


def silences(waveform: np.ndarray, sample_rate: int) -> tuple[float, float]:
    """Seconds of silence before the first and after the last sounding window of waveform [S]."""
    duration = len(waveform) / sample_rate
    window = max(1, round(SILENCE_WINDOW_S * sample_rate))
    n = math.ceil(len(waveform) / window)
    if n == 0:
        return 0.0, 0.0
    padded = np.zeros(n * window, dtype=np.float64)
    padded[: len(waveform)] = waveform
    rms = np.sqrt(np.mean(padded.reshape(n, window) ** 2, axis=1))
    threshold = max(SILENCE_FLOOR, rms.max() * 10 ** (-SILENCE_BELOW_PEAK_DB / 20))
    sounding = np.flatnonzero(rms >= threshold)
    if len(sounding) == 0:
        return duration, duration
    leading = float(sounding[0] * window / sample_rate)
    trailing = float(max(0.0, duration - (sounding[-1] + 1) * window / sample_rate))
    return leading, trailing
