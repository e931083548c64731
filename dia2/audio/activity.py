"""Where a recording holds speech, by frame energy: the spans a typed transcript's words are spread
over when no recogniser is at hand (`dia2.text.transcript.spread_transcript`).

A frame is speech when its level is within `SPEECH_RANGE_DB` of the recording's loudest frame and
above `SILENCE_DB` (the voice upload's silence level); pauses shorter than `MIN_PAUSE` are
bridged (the gaps between words of one phrase), and spans shorter than `MIN_SPAN` dropped (clicks).
"""

from __future__ import annotations

import numpy as np

from dia2.text.words import SpokenWord

FRAME_SECONDS = 0.02
"""Length of one level measurement."""
SPEECH_RANGE_DB = 35.0
"""A frame this far below the loudest one is no longer speech."""
SILENCE_DB = -50.0
"""A frame below this level (dBFS) is never speech."""
MIN_PAUSE = 0.15
"""Shorter silences inside speech are bridged (seconds)."""
MIN_SPAN = 0.06
"""Shorter runs of loud frames are dropped (seconds)."""


def speech_spans(waveform: np.ndarray, sample_rate: int, speaker: int = 1) -> list[SpokenWord]:
    """Mono waveform [S] -> its speech spans in time order, as untitled words (text "") of `speaker`."""
    hop = max(1, int(FRAME_SECONDS * sample_rate))
    frames = len(waveform) // hop
    if frames == 0:
        return []
    power = np.square(waveform[: frames * hop].astype(np.float64)).reshape(frames, hop).mean(axis=1)
    level = 10 * np.log10(np.maximum(power, 1e-12))
    loud = level >= max(level.max() - SPEECH_RANGE_DB, SILENCE_DB)
    seconds = hop / sample_rate  # one frame
    bridged: list[list[int]] = []
    for start, end in _runs(loud):
        if bridged and (start - bridged[-1][1]) * seconds < MIN_PAUSE:
            bridged[-1][1] = end
        else:
            bridged.append([start, end])
    return [
        SpokenWord("", start * seconds, end * seconds, speaker)
        for start, end in bridged
        if (end - start) * seconds >= MIN_SPAN
    ]


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) frame ranges where `mask` holds."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))
