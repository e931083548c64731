"""What preparing one recording yields: corpus rows, and every part left out with its reason.

A `FileResult` is the unit the cache stores and the corpus and QC report are assembled from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from data_prep.quality import LOW_QUALITY
from data_prep.vad import NO_SPEECH, SPEECH_AT_END, SPEECH_AT_START

# Reasons a file or an utterance is left out (the QC report counts them under these names).
UNREADABLE = "unreadable"
EMPTY = "empty"
SILENT = "silent"
CHANNELS = "wrong channel count"
TOO_SHORT = "too short"
TOO_LONG = "too long"
CLIPPED = "clipped"
LOW_CONFIDENCE = "low ASR confidence"
TEXT_MISMATCH = "text mismatch"
NO_SPEAKABLE_WORDS = "no speakable words"
NOT_AUDIO = "not audio"
NO_AUDIO_STREAM = "no audio stream"  # a video without sound
NOT_DIARIZED = "no two voices"  # --diarize could not tell the speakers apart
OVERLAP = "overlapping speech"  # --diarize: two voices at once, cut out
UNKNOWN_SPEAKER = "unknown speaker"  # --diarize: words in speech too short to tell whose voice it is
FAILED = "failed"  # an unexpected error; not cached, so the next run tries the file again

REASONS = (
    UNREADABLE, EMPTY, NO_AUDIO_STREAM, SILENT, NO_SPEECH, CHANNELS, NOT_DIARIZED, TOO_SHORT, TOO_LONG, CLIPPED,
    SPEECH_AT_START, SPEECH_AT_END, OVERLAP, UNKNOWN_SPEAKER, LOW_QUALITY, LOW_CONFIDENCE, TEXT_MISMATCH,
    NO_SPEAKABLE_WORDS, NOT_AUDIO, FAILED,
)


@dataclass(frozen=True)
class Skip:
    """A file (start None) or an utterance (its span in seconds) that was left out, and why."""

    source: str
    reason: str
    detail: str
    start: float | None = None
    end: float | None = None

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown skip reason {self.reason!r}; one of {REASONS}")

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "reason": self.reason, "detail": self.detail, "start": self.start, "end": self.end}


@dataclass
class FileResult:
    """One recording, prepared.

    rows: corpus rows (`dia2.data.corpus.make_row` dicts; codes int16 [N, K]) in spoken order;
    seconds: the audio read (after truncation); wer: word error rate of the transcript against
    the reference text, when one was given; notes: things a user should know that did not cost a
    row (e.g. a truncated file); figures: what was measured of the recording as a whole (level,
    clipping, speech fraction, DNSMOS, the diarisation's talk times and confidence) for the QC report.
    """

    source: str
    seconds: float = 0.0
    wer: float | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def kept(self) -> bool:
        return bool(self.rows)
