"""Quality: which cuts are clean enough speech to train on, by DNSMOS (`dia2.audio.dnsmos`).

The default `min_dnsmos` (OVRL) was measured on the espeak-ng fixtures with seeded white noise
(`python bench/recording_stages.py` prints the table; 2026-12, 2-core CPU), with the reference's
1 s hop and, in brackets, with the non-overlapping windows prep scores with:

    clip (seconds)          clean        +30 dB       +20 dB       +10 dB       +5 dB        +0 dB SNR
    voice_a (3.4)           3.01 (3.03)  2.89 (2.95)  2.34 (2.34)  1.95 (1.99)  1.71 (1.68)  1.48 (1.45)
    voice_b (2.7)           2.86 (2.86)  2.38 (2.38)  2.06 (2.06)  1.78 (1.78)  1.59 (1.59)  1.40 (1.40)
    alice/weather (6.6)     2.91 (2.96)  2.66 (2.73)  2.39 (2.45)  1.99 (1.94)  1.73 (1.71)  1.51 (1.55)
    bob/time (3.6)          2.83 (2.81)  2.97 (2.97)  2.35 (2.37)  1.91 (1.90)  1.76 (1.78)  1.57 (1.61)
    mono dialogue (19.2)    2.91 (2.86)  2.85 (2.78)  2.38 (2.37)  2.03 (2.02)  1.82 (1.84)  1.58 (1.57)

Those five are English voices; other languages' and voices' clean speech scores lower. Scored as
prep scores (non-overlapping windows brought to -23 LUFS; `RecordingQuality`), 2026-12-06:

    clean espeak-ng speech                                          lowest   highest
    the 14 fixtures (en, de, es; tests/fixtures/{audio,prep,language})  2.36     3.26
    13 more voices (en-us+f2/f4/m3/klatt, en-gb(+f3), fr+f2/m3, it+f3, de+f3/m2, es+f3)  2.00  3.09
    the same speech with white noise at 20 / 10 / 5 / 0 dB SNR (the 14 fixtures)
                                       20 dB 1.99-2.50, 10 dB 1.76-2.18, 5 dB 1.62-2.02, 0 dB 1.07-1.66

So the clean and the noisy overlap: a buzzy espeak voice (en-us+f4: 2.00, de+f3: 2.02; the
fixture greta/schluessel.ogg: 2.36) scores as low as another voice under hiss at 10 dB SNR. The
default, 1.8, is the highest threshold that drops no clean clip measured (margin 0.2) and it
drops every one drowned in noise at 0 dB SNR (highest 1.66): it never harms clean input, and it
records every cut's SIG, BAK and OVRL in the corpus for a stricter filter later. espeak's formant
speech scores below human speech (clean read speech scores about 3.2 to 3.5; Emilia-Pipe keeps
OVRL >= 3.0 from in-the-wild data): for human recordings raise it to 2.5-3.0, which drops hiss
an adapter would learn and keeps reverberant or lightly noisy speech.

Prep scores non-overlapping 9.01 s windows (`dnsmos_hop`): DNSMOS repeats a cut shorter than its
window end to end (to 9-18 s), and the reference's 1 s hop then scores that repeated audio up to
9 times; one window per 9 s is about 5x cheaper on 2-6 s cuts (0.8x against 5.2x real time on the
loaded 2-core CPU) and moves OVRL by at most 0.07 on the clips above.

And prep scores each recording once, not each cut (`RecordingQuality`): its windows tile the whole
recording (the last one ends at its end; a recording shorter than a window is repeated end to end,
as a short clip is), windows without speech are skipped, and each window is brought to the
loudness target first (DNSMOS rates quiet speech lower: clean espeak speech scores OVRL 2.73 at
-40 LUFS, 2.94 at -23). A cut's score is the mean of the windows it overlaps, weighted by the
overlap. One model call per 9 s of speech instead of one per cut (the model takes 9.01 s whatever
the cut's length): about 3x cheaper on 3 s cuts. The price is resolution: a cut shares its score
with the speech up to 9 s around it, so noise that starts mid-window is blamed on its neighbours
too; a recording's noise usually lasts longer than that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from data_prep.loudness import integrated_loudness
from dia2.audio.dnsmos import DNSMOS_RATE, INPUT_SECONDS, WINDOW_SAMPLES, DnsmosScore, DnsmosScorer, clip_windows
from dia2.errors import Dia2Error

LOW_QUALITY = "low DNSMOS"
"""The QC reason of a cut dropped for its DNSMOS."""
_BATCH_WINDOWS = 4  # windows per model call (2.3 MB of input)


class QualityError(Dia2Error, ValueError):
    """A quality setting that cannot work; the message names it and the fix."""


@dataclass(frozen=True)
class QualityConfig:
    """Quality: DNSMOS P.835 scores every cut (SIG speech, BAK background, OVRL overall; 1-5) and drops noisy ones."""

    min_dnsmos: float = 1.8
    """Drop cuts whose DNSMOS OVRL (1-5) is below this: 1.8 keeps every clean espeak-ng voice measured
    (lowest 2.0) and drops speech drowned in noise (0 dB SNR: at most 1.66); for human recordings
    2.5-3.0 also drops hiss (data_prep/quality.py). 0 turns the stage off (no scores); 1 scores every
    cut and keeps them all."""
    dnsmos_hop: float = INPUT_SECONDS
    """Seconds between DNSMOS windows: 9.01 scores non-overlapping windows, 1 is the reference's
    (up to 9x the cost on short cuts, OVRL within 0.07)."""

    def __post_init__(self) -> None:
        if not 0 <= self.min_dnsmos <= 5:
            raise QualityError(f"the lowest DNSMOS {self.min_dnsmos} must lie in [0, 5] (a mean opinion score; 0 keeps every cut)")
        if not 0 < self.dnsmos_hop <= INPUT_SECONDS:
            raise QualityError(f"the DNSMOS hop {self.dnsmos_hop} s must lie in (0, {INPUT_SECONDS}] (the reference's is 1)")


def quality_scorer(config: QualityConfig = QualityConfig(), threads: int = 1) -> DnsmosScorer:
    """The DNSMOS scorer prep uses (loaded on first use)."""
    return DnsmosScorer(threads=threads, hop_seconds=config.dnsmos_hop)


@dataclass(frozen=True)
class QualityCheck:
    """A cut's DNSMOS, and why it is dropped (None: kept)."""

    score: DnsmosScore
    reason: str | None


def check_quality(waveform: np.ndarray, sample_rate: int, scorer: DnsmosScorer, config: QualityConfig = QualityConfig()) -> QualityCheck:
    """Score mono [S] and compare its OVRL with `config.min_dnsmos`."""
    score = scorer.score(waveform, sample_rate)
    problem = quality_problem(score, config)
    return QualityCheck(score, f"{LOW_QUALITY} ({problem})" if problem else None)


def quality_problem(score: DnsmosScore, config: QualityConfig) -> str | None:
    """Why a cut with this DNSMOS is dropped (its OVRL below `config.min_dnsmos`), or None."""
    low = score.ovrl < config.min_dnsmos
    return f"OVRL {score.ovrl:.2f} < --min-dnsmos {config.min_dnsmos:g} (SIG {score.sig:.2f}, BAK {score.bak:.2f})" if low else None


@dataclass(frozen=True)
class QualityWindows:
    """A recording's DNSMOS window by window: each window's span (seconds) [W, 2] and its SIG,
    BAK, OVRL [W, 3]."""

    spans: np.ndarray
    scores: np.ndarray

    def over(self, start: float, end: float) -> DnsmosScore | None:
        """The DNSMOS of seconds [start, end): the windows it overlaps, weighted by the overlap
        (None when it overlaps no scored window)."""
        weights = np.clip(np.minimum(self.spans[:, 1], end) - np.maximum(self.spans[:, 0], start), 0.0, None)
        if not weights.sum() > 0:
            return None
        sig, bak, ovrl = weights @ self.scores / weights.sum()
        return DnsmosScore(float(sig), float(bak), float(ovrl), int(np.count_nonzero(weights)))

    def mean(self) -> DnsmosScore | None:
        """The whole recording's DNSMOS: the mean over its scored windows."""
        if not len(self.scores):
            return None
        sig, bak, ovrl = self.scores.mean(axis=0)
        return DnsmosScore(float(sig), float(bak), float(ovrl), len(self.scores))


class RecordingQuality:
    """DNSMOS of a whole recording fed to it in order, block by block (16 kHz mono), window by
    window (see the module's docstring). `has_speech(start, end)`: whether a window's seconds hold
    speech worth scoring; `target_lufs`: the level each window is brought to (None: as recorded)."""

    def __init__(self, scorer: DnsmosScorer, config: QualityConfig, target_lufs: float | None,
                 has_speech: Callable[[float, float], bool]) -> None:
        self.scorer, self.target_lufs, self.has_speech = scorer, target_lufs, has_speech
        self._hop = int(config.dnsmos_hop * DNSMOS_RATE)
        self._buffer = np.zeros(0, np.float32)  # audio from sample `_origin` on (at least a window's worth, once there is)
        self._origin = self._next = 0  # first sample of the buffer, and of the next window
        self._batch: list[tuple[np.ndarray, float, float]] = []
        self._spans: list[tuple[float, float]] = []
        self._scores: list[np.ndarray] = []

    def add(self, block: np.ndarray) -> None:
        """The next 16 kHz samples [S] of the recording."""
        self._buffer = np.concatenate([self._buffer, block.astype(np.float32)])
        while self._next + WINDOW_SAMPLES <= self._origin + len(self._buffer):
            at = self._next - self._origin
            self._window(self._buffer[at : at + WINDOW_SAMPLES], self._next)
            self._next += self._hop
        drop = max(0, min(self._next - self._origin, len(self._buffer) - WINDOW_SAMPLES))
        self._buffer, self._origin = self._buffer[drop:], self._origin + drop

    def finish(self) -> QualityWindows:
        """The scores of every window, the last one ending at the recording's end."""
        end = self._origin + len(self._buffer)
        if self._next == 0 and end:
            for window in clip_windows(self._buffer, self._hop / DNSMOS_RATE):  # shorter than a window: repeated
                self._window(window, 0, end)
        elif end > self._next - self._hop + WINDOW_SAMPLES:
            self._window(self._buffer[-WINDOW_SAMPLES:], end - WINDOW_SAMPLES)
        self._score()
        return QualityWindows(np.array(self._spans, np.float64).reshape(-1, 2), np.array(self._scores, np.float64).reshape(-1, 3))

    def _window(self, audio: np.ndarray, first: int, last: int | None = None) -> None:
        start, end = first / DNSMOS_RATE, (last if last is not None else first + WINDOW_SAMPLES) / DNSMOS_RATE
        if not np.any(audio) or not self.has_speech(start, end):
            return
        if self.target_lufs is not None:
            loudness = integrated_loudness(audio, DNSMOS_RATE)
            if np.isfinite(loudness):
                audio = audio * np.float32(10 ** ((self.target_lufs - loudness) / 20))
        self._batch.append((audio, start, end))
        if len(self._batch) == _BATCH_WINDOWS:
            self._score()

    def _score(self) -> None:
        if self._batch:
            self._scores += list(self.scorer.score_windows(np.stack([w for w, _, _ in self._batch])))
            self._spans += [(start, end) for _, start, end in self._batch]
            self._batch = []
