"""The one timed-word type: what a recogniser hears, a voice stores, a corpus row holds and the
alignment places on frames.

Speech recognition (`dia2.audio.asr`), voice prefixes (`dia2.generation.prefix`), data prep and
the corpus (`dia2.data.corpus`) all pass words as `SpokenWord`, so a word keeps its text, span,
speaker and confidence from the recogniser to the training row. This module imports nothing from
dia2, so every layer can use it without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpokenWord:
    """A word as heard: text, span in seconds (from the start of its recording or utterance),
    speaker 1 or 2, and the recogniser's probability for it (1.0 for words with known text)."""

    text: str
    start: float
    end: float
    speaker: int = 1
    probability: float = 1.0
