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

2.5 keeps every clean clip (lowest 2.81) and drops every one with noise at 20 dB SNR or worse
(highest 2.45): hiss an adapter would learn. espeak's formant speech scores below human speech
(clean read speech scores about 3.2 to 3.5; Emilia-Pipe keeps OVRL >= 3.0 from in-the-wild
data), so on human recordings 2.5 drops clearly noisy cuts and keeps the reverberant or lightly
noisy ones a user adapting a voice cannot do without. Raise it toward 3 for a large, clean corpus.

Prep scores non-overlapping 9.01 s windows (`dnsmos_hop`): DNSMOS repeats a cut shorter than its
window end to end (to 9-18 s), and the reference's 1 s hop then scores that repeated audio up to
9 times; one window per 9 s is about 5x cheaper on 2-6 s cuts (0.8x against 5.2x real time on the
loaded 2-core CPU) and moves OVRL by at most 0.07 on the clips above.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dia2.audio.dnsmos import INPUT_SECONDS, DnsmosScore, DnsmosScorer
from dia2.errors import Dia2Error

LOW_QUALITY = "low DNSMOS"
"""The QC reason of a cut dropped for its DNSMOS."""


class QualityError(Dia2Error, ValueError):
    """A quality setting that cannot work; the message names it and the fix."""


@dataclass(frozen=True)
class QualityConfig:
    """Speech quality filter (DNSMOS P.835)."""

    min_dnsmos: float = 2.5
    """Drop cuts whose DNSMOS OVRL (1-5) is below this (0 keeps all): 2.5 keeps clean speech and
    drops speech under noise at 20 dB SNR or worse (measured: data_prep/quality.py)."""
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
    low = score.ovrl < config.min_dnsmos
    return QualityCheck(score, f"{LOW_QUALITY} (OVRL {score.ovrl:.2f} < {config.min_dnsmos:g})" if low else None)
