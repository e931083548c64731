"""A typed transcript re-aligned to the words a recogniser heard, so a corrected voice keeps true times.

A voice prefix needs every word's time in its recording. Whisper gives times with its words; when
a user corrects the text ("Dia two" -> "Dia2", a name it misheard, a word it missed), matching the
typed words to the heard ones by position gives every word after the first edit another word's
time. This module aligns them instead:

- an edit-distance alignment of typed to heard words (compared lower-case, without punctuation)
  keeps each word that matches its heard time (and the heard speaker);
- between two matched words, the typed words take the span of the heard words they replace,
  shared by character length: a split ("today" -> "to day") halves one word's span, a merge
  ("to day" -> "today") takes both spans, a replacement takes its word's span;
- a typed word with no heard word to replace (the recogniser missed it) takes the pause between
  its neighbours, or shares the previous word's span when there is no pause;
- heard words the transcript drops are left out.

`align_transcript` returns the new words and a row per typed word (heard words, times, how it was
placed) for a page or a log to show before anything is saved. The studio's Voices tab, the speech
server's `transcript` field and `dia2-infer --save-voice` with a transcript all use it.

Without a recogniser there are no heard words: `spread_transcript` times the typed words from the
spans of speech found in the recording (`dia2.audio.activity`), each span taking the words that
fall in it by character length and sharing its time among them as a replaced word's span is
shared (the speech server does this for an upload with a transcript when Whisper is unavailable).
"""

from __future__ import annotations

import bisect
import itertools
import re
import unicodedata
from dataclasses import dataclass, replace
from typing import Literal, Sequence

from dia2.errors import Dia2Error
from dia2.text.words import SpokenWord

Placement = Literal["heard", "replaced", "split", "merged", "inserted", "spread"]

# A pause shorter than this per inserted word is no room for it: share the previous word instead.
MIN_INSERT_SECONDS = 0.06


class TranscriptError(Dia2Error, ValueError):
    """A transcript that cannot be aligned (empty, or nothing was heard); the message says why."""


@dataclass(frozen=True)
class AlignedWord:
    """One typed word, where it was placed and the heard words it took its time from."""

    typed: str
    heard: tuple[str, ...]
    start: float
    end: float
    speaker: int
    placement: Placement


@dataclass(frozen=True)
class TranscriptAlignment:
    """The typed words with times (`words`), one row each (`rows`), and the heard words dropped."""

    words: tuple[SpokenWord, ...]
    rows: tuple[AlignedWord, ...]
    dropped: tuple[SpokenWord, ...]

    @property
    def matched(self) -> int:
        """How many typed words were heard as typed."""
        return sum(row.placement == "heard" for row in self.rows)

    @property
    def matched_fraction(self) -> float:
        """Matched words over the larger of the typed and heard counts: near 0 for a transcript of
        other speech, whose times would all be guesses."""
        return self.matched / max(len(self.rows), self.matched + len(self.dropped) + sum(
            len(row.heard) for row in self.rows if row.placement != "heard"), 1)

    @property
    def changed(self) -> bool:
        """Whether any word differs from what was heard (text or presence)."""
        return bool(self.dropped) or any(row.placement != "heard" or row.typed != row.heard[0] for row in self.rows)

    def table(self) -> list[list[str]]:
        """Rows of [typed, heard, start, end, placement] in time order (seconds), for display."""
        typed = [(row.start, row.typed, " ".join(row.heard) or "-", row.end, row.placement) for row in self.rows]
        dropped = [(w.start, "-", w.text, w.end, "dropped") for w in self.dropped]
        return [
            [word, heard, f"{start:.2f}", f"{end:.2f}", placement]
            for start, word, heard, end, placement in sorted(typed + dropped, key=lambda row: row[0])
        ]


def comparable(word: str) -> str:
    """A word as compared: case-folded, accents kept, punctuation and symbols removed."""
    kept = "".join(ch for ch in unicodedata.normalize("NFC", word) if unicodedata.category(ch)[0] in "LN")
    return kept.casefold()


def align_transcript(heard: Sequence[SpokenWord], transcript: str) -> TranscriptAlignment:
    """Typed `transcript` words timed from the `heard` words (in time order) they correspond to."""
    typed = transcript.split()
    if not typed:
        raise TranscriptError("the transcript is empty: type the words spoken in the recording, or leave it out")
    if not heard:
        raise TranscriptError("no words were heard in the recording, so a transcript has no times to take")
    typed_keys, heard_keys = [comparable(t) for t in typed], [comparable(w.text) for w in heard]
    blocks = _absorb_short_inserts(_blocks(_edit_path(typed_keys, heard_keys), typed_keys, heard_keys), heard)
    rows: list[AlignedWord] = []
    dropped: list[SpokenWord] = []
    for k, (typed_ids, heard_ids) in enumerate(blocks):
        words = [typed[t] for t in typed_ids]
        spans = [heard[h] for h in heard_ids]
        if not words:
            dropped += spans
        elif len(words) == 1 and len(spans) == 1 and typed_keys[typed_ids[0]] == heard_keys[heard_ids[0]]:
            w = spans[0]
            rows.append(AlignedWord(words[0], (w.text,), w.start, w.end, w.speaker, "heard"))
        elif spans:
            rows += _share(words, spans)
        else:
            rows += _inserted(words, *_gap(blocks, k, heard))
    words_out = tuple(
        SpokenWord(row.typed, row.start, row.end, row.speaker, _probability(row, heard, blocks)) for row in rows
    )
    return TranscriptAlignment(words_out, tuple(rows), tuple(dropped))


def spread_transcript(spans: Sequence[SpokenWord], transcript: str) -> TranscriptAlignment:
    """Typed `transcript` words timed without a recogniser, from the speech `spans` of the
    recording (words without text, in time order; their speakers). The words are laid over the
    speech in order by character length: a word goes to the span its middle falls in, and each
    span is shared among its words by character length. A transcript tagged `[S1] ... [S2] ...`
    gives each speaker's words to that speaker's spans only (untagged words are speaker 1's)."""
    groups = _speaker_words(transcript)
    if not any(words for _, words in groups):
        raise TranscriptError("the transcript is empty: type the words spoken in the recording, or leave it out")
    if not spans:
        raise TranscriptError("no speech was found in the recording, so a transcript has no times to take")
    rows: list[AlignedWord] = []
    for speaker, words in groups:
        own = [s for s in spans if speaker is None or s.speaker == speaker]
        if not own:
            raise TranscriptError(f"the transcript gives words to [S{speaker}], but speaker {speaker} has no recording")
        rows += _spread(words, own)
    rows.sort(key=lambda row: row.start)
    words_out = tuple(SpokenWord(row.typed, row.start, row.end, row.speaker) for row in rows)
    return TranscriptAlignment(words_out, tuple(rows), ())


_TAG = re.compile(r"\[S([12])\]")


def untagged(transcript: str) -> str:
    """The transcript without speaker tags ([S1], [S2]): the words alone, for `align_transcript`,
    which takes each word's speaker from the heard word it matches."""
    return " ".join(_TAG.sub(" ", transcript).split())


def _speaker_words(transcript: str) -> list[tuple[int | None, list[str]]]:
    """The typed words per speaker tag ([(None, words)] for a transcript without tags)."""
    parts = _TAG.split(transcript)
    if len(parts) == 1:
        return [(None, transcript.split())]
    words: dict[int, list[str]] = {1: parts[0].split()}
    for tag, text in zip(parts[1::2], parts[2::2]):
        words.setdefault(int(tag), []).extend(text.split())
    return [(speaker, w) for speaker, w in sorted(words.items()) if w]


def _spread(typed: list[str], spans: list[SpokenWord]) -> list[AlignedWord]:
    """`typed` words laid over `spans` by character length (see `spread_transcript`)."""
    lengths = [max(len(comparable(t)), 1) for t in typed]
    ends = list(itertools.accumulate(s.end - s.start for s in spans))  # speech time at each span's end
    total, at = sum(lengths), 0
    taken: list[list[str]] = [[] for _ in spans]
    for word, length in zip(typed, lengths):
        middle = (at + length / 2) / total * ends[-1]
        taken[min(bisect.bisect_left(ends, middle), len(spans) - 1)].append(word)
        at += length
    return [
        replace(row, heard=(), placement="spread")
        for span, words in zip(spans, taken)
        if words
        for row in _share(words, [span])
    ]


def _probability(row: AlignedWord, heard: Sequence[SpokenWord], blocks) -> float:
    """The recogniser's probability for a word heard exactly as typed; 1.0 for words the user gave."""
    if row.placement == "heard" and row.typed == row.heard[0]:
        for w in heard:
            if (w.text, w.start, w.end) == (row.heard[0], row.start, row.end):
                return w.probability
    return 1.0


def _edit_path(typed: list[str], heard: list[str]) -> list[tuple[int | None, int | None]]:
    """The cheapest alignment as (typed index or None, heard index or None) pairs, in order.

    Cost: one per substituted, inserted or deleted word; among equally cheap alignments the one
    with the most matching words wins ("to day" for "today" then keeps the words around it).
    """
    n, m = len(typed), len(heard)
    # cost[i][j] = (edits, -matches) of aligning typed[:i] with heard[:j]; tuples compare in order.
    cost = [[(0, 0)] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        cost[i][0] = (i, 0)
    for j in range(1, m + 1):
        cost[0][j] = (j, 0)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i][j] = min(_moves(cost, typed, heard, i, j))[0]
    path: list[tuple[int | None, int | None]] = []
    i, j = n, m
    while i > 0 or j > 0:
        _, (di, dj) = min(_moves(cost, typed, heard, i, j))
        path.append((i - 1 if di else None, j - 1 if dj else None))
        i, j = i - di, j - dj
    return path[::-1]


def _moves(cost, typed: list[str], heard: list[str], i: int, j: int):
    """The ways into cell (i, j): ((edits, -matches), (typed step, heard step)), diagonal first."""
    if i > 0 and j > 0:
        same = typed[i - 1] == heard[j - 1] and typed[i - 1] != ""
        edits, negative_matches = cost[i - 1][j - 1]
        yield (edits + (0 if same else 1), negative_matches - (1 if same else 0)), (1, 1)
    if i > 0:
        yield (cost[i - 1][j][0] + 1, cost[i - 1][j][1]), (1, 0)
    if j > 0:
        yield (cost[i][j - 1][0] + 1, cost[i][j - 1][1]), (0, 1)


def _blocks(
    path: list[tuple[int | None, int | None]], typed: list[str], heard: list[str]
) -> list[tuple[list[int], list[int]]]:
    """Group the path into matched pairs (each alone) and the runs of edits between them."""
    blocks: list[tuple[list[int], list[int]]] = []
    run: tuple[list[int], list[int]] = ([], [])
    for t, h in path:
        if t is not None and h is not None and typed[t] == heard[h] and typed[t] != "":
            if run[0] or run[1]:
                blocks.append(run)
                run = ([], [])
            blocks.append(([t], [h]))
            continue
        if t is not None:
            run[0].append(t)
        if h is not None:
            run[1].append(h)
    if run[0] or run[1]:
        blocks.append(run)
    return blocks


def _share(typed: list[str], heard: list[SpokenWord]) -> list[AlignedWord]:
    """Typed words over the span of the heard words they replace, shared by character length."""
    start, end = heard[0].start, max(w.end for w in heard)
    lengths = [max(len(comparable(t)), 1) for t in typed]
    total = sum(lengths)
    placement: Placement = "replaced" if len(typed) == len(heard) else "split" if len(typed) > len(heard) else "merged"
    texts = tuple(w.text for w in heard)
    rows, at = [], start
    for word, length in zip(typed, lengths):
        until = at + (end - start) * length / total
        rows.append(AlignedWord(word, texts, at, until, _speaker_at(heard, (at + until) / 2), placement))
        at = until
    return rows


def _speaker_at(heard: list[SpokenWord], moment: float) -> int:
    """The speaker of the heard word nearest `moment`."""
    return min(heard, key=lambda w: 0.0 if w.start <= moment <= w.end else min(abs(w.start - moment), abs(w.end - moment))).speaker


def _gap(blocks: list[tuple[list[int], list[int]]], k: int, heard: Sequence[SpokenWord]) -> tuple[float, float, int]:
    """The pause around block k: (end of the heard word before it, start of the one after, speaker)."""
    before = [h for typed_ids, heard_ids in blocks[:k] for h in heard_ids]
    after = [h for typed_ids, heard_ids in blocks[k + 1:] for h in heard_ids]
    start = heard[before[-1]].end if before else 0.0
    end = heard[after[0]].start if after else start
    speaker = heard[before[-1]].speaker if before else heard[after[0]].speaker
    return start, end, speaker


def _absorb_short_inserts(
    blocks: list[tuple[list[int], list[int]]], heard: Sequence[SpokenWord]
) -> list[tuple[list[int], list[int]]]:
    """Join a run of typed words nobody was heard saying to its previous block (its next, at the
    start) when the pause it falls in cannot hold it, so it shares that block's heard span."""
    out: list[tuple[list[int], list[int]]] = []
    k = 0
    while k < len(blocks):
        typed_ids, heard_ids = blocks[k]
        if typed_ids and not heard_ids:
            start, end, _ = _gap(blocks, k, heard)
            has_next = any(h for _, h in blocks[k + 1:])
            if not has_next or end - start < MIN_INSERT_SECONDS * len(typed_ids):
                host = next((j for j in range(len(out) - 1, -1, -1) if out[j][1]), None)
                if host is not None:
                    out[host] = (out[host][0] + typed_ids, out[host][1])
                    k += 1
                    continue
                if k + 1 < len(blocks):
                    blocks[k + 1] = (typed_ids + blocks[k + 1][0], blocks[k + 1][1])
                    k += 1
                    continue
        out.append((typed_ids, heard_ids))
        k += 1
    return out


def _inserted(typed: list[str], start: float, end: float, speaker: int) -> list[AlignedWord]:
    """Words the recogniser missed, spread evenly over the pause they fall in."""
    step = (end - start) / len(typed)
    return [AlignedWord(w, (), start + k * step, start + (k + 1) * step, speaker, "inserted") for k, w in enumerate(typed)]
