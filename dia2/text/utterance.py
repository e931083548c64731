"""Timed words of an utterance -> entries and frame alignment: one path for prefixes and training.

A voice prefix (inference) and a corpus row (training) are the same thing to the model: speech
whose words have known times. Both go through `align_utterance`, so the new_word steps a model
is trained on are exactly the ones it is forced with at inference.

Words become entries through the script parser itself (`ScriptParser`), speaker tags included,
so a word is tokenised as it would be in a script; a word the parser splits (e.g. "a:b") shares
its time span among its entries.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Sequence

from dia2.text.align import Alignment, TimedWord, align_words
from dia2.text.script import Entry, ScriptError, ScriptParser, TextTokenIds, Tokenizer

logger = logging.getLogger(__name__)

SPEAKER_TAGS = {1: "[S1]", 2: "[S2]"}
_MARKUP = re.compile(r"[\[\]<>]")


@dataclass(frozen=True)
class SpokenWord:
    """A word as heard: text, span in seconds within the utterance, speaker 1 or 2."""

    text: str
    start: float
    end: float
    speaker: int = 1


@dataclass(frozen=True)
class AlignedUtterance:
    """Entries (one per spoken unit), their words, and the frame alignment of those entries."""

    entries: tuple[Entry, ...]
    words: tuple[SpokenWord, ...]
    alignment: Alignment


def entries_for_words(
    words: Sequence[SpokenWord],
    tokenizer: Tokenizer,
    ids: TextTokenIds,
    prepend_s1_to_first_word: bool = True,
) -> list[tuple[Entry, SpokenWord]]:
    """Each word's entries (with its time share), tagged on speaker changes, as a script would be.

    Markup characters ([ ] < >) are dropped from word text: transcripts never carry tags, and a
    stray one would otherwise be read as a (bad) tag.
    """
    parser = ScriptParser(tokenizer, ids, prepend_s1_to_first_word=prepend_s1_to_first_word)
    out: list[tuple[Entry, SpokenWord]] = []
    previous = None
    for word in words:
        if word.speaker not in SPEAKER_TAGS:
            raise ValueError(f"word {word.text!r} has speaker {word.speaker}; speakers are 1 or 2")
        text = _MARKUP.sub("", word.text).strip()
        if not text:
            continue
        tag = SPEAKER_TAGS[word.speaker] + " " if word.speaker != previous else ""
        previous = word.speaker
        try:
            entries = parser.feed(f"{tag}{text} ")
        except ScriptError as exc:
            raise ValueError(f"word {word.text!r} cannot be spoken: {exc}") from exc
        out += _share_time(entries, word)
    out += [(e, words[-1]) for e in parser.finish()] if words else []
    return out


def _share_time(entries: list[Entry], word: SpokenWord) -> list[tuple[Entry, SpokenWord]]:
    if len(entries) <= 1:
        return [(e, word) for e in entries]
    step = (word.end - word.start) / len(entries)
    return [
        (e, SpokenWord(e.text, word.start + i * step, word.start + (i + 1) * step, word.speaker))
        for i, e in enumerate(entries)
    ]


def align_utterance(
    words: Sequence[SpokenWord],
    tokenizer: Tokenizer,
    ids: TextTokenIds,
    prepend_s1_to_first_word: bool = True,
) -> AlignedUtterance:
    """Entries with the alignment rule's padding, and their frame alignment (spec section 6).

    Raises ValueError when no word can be spoken.
    """
    pairs = [(e, w) for e, w in entries_for_words(words, tokenizer, ids, prepend_s1_to_first_word) if e.tokens]
    if not pairs:
        raise ValueError("the utterance has no words the tokenizer can encode")
    alignment = align_words([TimedWord(w.start, w.end, len(e.tokens)) for e, w in pairs])
    entries = tuple(Entry(e.tokens, e.text, a.padding) for (e, _), a in zip(pairs, alignment.words))
    return AlignedUtterance(entries, tuple(w for _, w in pairs), alignment)
