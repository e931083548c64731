"""Cutting a recording's words into utterances at pauses.

Two rules, in order:
1. A pause longer than `max_pause` always ends an utterance (long silences are wasted context).
   A shorter pause stays inside the utterance; one longer than the state machine's padding
   budget (about half a second) becomes a break entry when the words are aligned
   (`dia2.text.align`), so the model learns breaks a script can ask for.
2. Speech that runs past `max_seconds` is cut at the last pause of at least `split_pause` that
   leaves at least `min_seconds` before it; failing that, at the longest pause that does; failing
   that, at the longest pause. So utterances are as long as the limit allows and end at breaths.

Lengths are measured from the first word's start to the last word's end. Words are those of all
speakers merged by start time; in a dialogue a pause is measured from the latest end so far, so
overlapping speech is never cut.
"""

from __future__ import annotations

from typing import Sequence

from data_prep.config import SegmentOptions
from dia2.text.words import SpokenWord


def split_utterances(words: Sequence[SpokenWord], options: SegmentOptions) -> list[list[SpokenWord]]:
    """Words in spoken order -> utterances (lists of consecutive words), none longer than
    `options.max_seconds` unless a single word is."""
    utterances: list[list[SpokenWord]] = []
    for run in _split_at_long_pauses(words, options.max_pause):
        utterances += _fit(run, options)
    return utterances


def span_seconds(words: Sequence[SpokenWord]) -> float:
    """From the first word's start to the latest word end."""
    return max(w.end for w in words) - words[0].start


def _split_at_long_pauses(words: Sequence[SpokenWord], max_pause: float) -> list[list[SpokenWord]]:
    runs: list[list[SpokenWord]] = []
    latest_end = float("-inf")
    for word in words:
        if not runs or word.start - latest_end > max_pause:
            runs.append([])
        runs[-1].append(word)
        latest_end = max(latest_end, word.end)
    return runs


def _fit(words: list[SpokenWord], options: SegmentOptions) -> list[list[SpokenWord]]:
    """Greedy: take as many words as fit in max_seconds, then cut at the best pause among them."""
    out: list[list[SpokenWord]] = []
    i = 0
    while i < len(words):
        j, end = i, words[i].end
        while j + 1 < len(words) and max(end, words[j + 1].end) - words[i].start <= options.max_seconds:
            j += 1
            end = max(end, words[j].end)
        if j == len(words) - 1:
            out.append(words[i:])
            break
        cut = _best_cut(words, i, j, options)
        out.append(words[i : cut + 1])
        i = cut + 1
    return out


def _best_cut(words: list[SpokenWord], first: int, last: int, options: SegmentOptions) -> int:
    """The index k in [first, last] to cut after (word k ends the utterance; k + 1 starts the next)."""
    candidates = []  # (k, pause after k, utterance length up to k)
    end = float("-inf")
    for k in range(first, last + 1):
        end = max(end, words[k].end)
        candidates.append((k, words[k + 1].start - end, end - words[first].start))
    long_enough = [c for c in candidates if c[2] >= options.min_seconds]
    good = [c for c in long_enough if c[1] >= options.split_pause]
    if good:
        return good[-1][0]
    pool = long_enough or candidates
    # Longest pause; the later one on ties, for longer utterances.
    return max(pool, key=lambda c: (c[1], c[0]))[0]
