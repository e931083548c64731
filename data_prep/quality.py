"""Quality: which cuts are clean enough speech to train on, by DNSMOS (`dia2.audio.dnsmos`).

The default `min_dnsmos` (OVRL) was measured on the espeak-ng fixtures (bench/recording_stages.py
prints the table; 2026-12, on the 2-core CPU):

    clip (seconds)            clean   +30 dB  +20 dB  +10 dB   +5 dB   +0 dB SNR white noise
    voice_a (3.4)             3.01    2.89    2.32    1.94    1.65    1.46
    voice_b (2.7)             2.86    2.35    2.02    1.79    1.67    1.48
    alice/weather (6.6)       2.91    2.70    2.36    1.98    1.74    1.56
    bob/time (3.6)            2.83    2.88    2.30    1.96    1.73    1.55
    dialogue, mixed (8.5)     2.73    2.90    2.45    2.13    1.88    1.60

2.5 keeps every clean clip (lowest 2.73) and drops every one with noise at 20 dB SNR or worse
(highest 2.45): hiss an adapter would learn. espeak's formant speech scores below human speech
(clean read speech scores about 3.2 to 3.5; Emilia-Pipe keeps OVRL >= 3.0 from in-the-wild
data), so on human recordings 2.5 drops only clearly noisy cuts and keeps the reverberant or
lightly noisy ones a user adapting a voice cannot do without. Raise it toward 3 for a large,
clean corpus.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dia2.audio.dnsmos import DnsmosScore, DnsmosScorer
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

    def __post_init__(self) -> None:
        if not 0 <= self.min_dnsmos <= 5:
            raise QualityError(f"the lowest DNSMOS {self.min_dnsmos} must lie in [0, 5] (a mean opinion score; 0 keeps every cut)")


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
