"""Timed words -> entries and frame alignment, for a training row or a voice prefix.

A corpus row (training) and a voice prefix (inference) are both speech whose words have known
times, and both become entries the same way: through the script parser itself (`ScriptParser`),
speaker tags included, so a word is tokenised as it would be in a script; a word the parser
splits (e.g. "a:b") shares its time span among its entries. They differ in the alignment rule
(`dia2.text.align`, docs/alignment.md):

- `align_utterance` (training rows, our rule): pauses the state machine cannot wait out alone
  become break entries, so a row's entries are exactly those of a script with
  `<break time="..."/>` tags (`script_text` writes that script) and its text is one unforced
  decoding can produce;
- `align_prefix` (voice prefixes, the published rule): word entries only, each padded until the
  next word, as the published runtime forces them.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from typing import Sequence

from dia2.model.config import FRAME_RATE
from dia2.text.align import Alignment, prefix_alignment, training_alignment
from dia2.text.script import (
    SPEAKER_TAGS,
    Entry,
    ScriptError,
    ScriptParser,
    TextTokenIds,
    Tokenizer,
)
from dia2.text.words import SpokenWord

logger = logging.getLogger(__name__)

_MARKUP = re.compile(r"[\[\]<>]")


@dataclass(frozen=True)
class AlignedUtterance:
    """Entries (words and breaks, in the order the state machine consumes them), the words
    behind the word entries, and the frame alignment of those words and breaks."""

    entries: tuple[Entry, ...]
    words: tuple[SpokenWord, ...]
    alignment: Alignment

    @property
    def num_words(self) -> int:
        """Word entries (breaks have no tokens and never reach the transcript)."""
        return len(self.alignment.words)


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
        if not 1 <= word.speaker <= len(SPEAKER_TAGS):
            raise ValueError(f"word {word.text!r} has speaker {word.speaker}; speakers are 1 or 2")
        text = _MARKUP.sub("", word.text).strip()
        if not text:
            continue
        tag = SPEAKER_TAGS[word.speaker - 1] + " " if word.speaker != previous else ""
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
        (e, replace(word, text=e.text, start=word.start + i * step, end=word.start + (i + 1) * step))
        for i, e in enumerate(entries)
    ]


def _spoken_pairs(
    words: Sequence[SpokenWord], tokenizer: Tokenizer, ids: TextTokenIds, prepend_s1_to_first_word: bool
) -> list[tuple[Entry, SpokenWord]]:
    pairs = [(e, w) for e, w in entries_for_words(words, tokenizer, ids, prepend_s1_to_first_word) if e.tokens]
    if not pairs:
        raise ValueError("the utterance has no words the tokenizer can encode")
    return pairs


def align_utterance(
    words: Sequence[SpokenWord],
    tokenizer: Tokenizer,
    ids: TextTokenIds,
    prepend_s1_to_first_word: bool = True,
) -> AlignedUtterance:
    """A training row's entries, with the breaks its pauses need, and their frame alignment
    (`training_alignment`). Word entries are the script parser's (padding = one frame per
    token). Raises ValueError when no word can be spoken."""
    pairs = _spoken_pairs(words, tokenizer, ids, prepend_s1_to_first_word)
    alignment = training_alignment([w for _, w in pairs], [len(e.tokens) for e, _ in pairs])
    entries: list[Entry] = []
    for i, (entry, _) in enumerate(pairs):
        entries += [Entry((), "", b.frames) for b in alignment.breaks if b.before == i]
        entries.append(entry)
    return AlignedUtterance(tuple(entries), tuple(w for _, w in pairs), alignment)


def align_prefix(
    words: Sequence[SpokenWord], tokenizer: Tokenizer, ids: TextTokenIds, speaker_2_frame: int | None = None
) -> AlignedUtterance:
    """A voice prefix's entries and their frame alignment (`prefix_alignment`, published): one
    entry per word, each speaker's first word tagged, its padding running until the next word.
    speaker_2_frame: where speaker 2's recording starts (None: one recording). Raises ValueError
    when no word can be spoken."""
    pairs = _spoken_pairs(words, tokenizer, ids, prepend_s1_to_first_word=False)
    alignment = prefix_alignment([w for _, w in pairs], [len(e.tokens) for e, _ in pairs], speaker_2_frame=speaker_2_frame)
    entries = tuple(Entry(e.tokens, e.text, a.padding) for (e, _), a in zip(pairs, alignment.words))
    return AlignedUtterance(entries, tuple(w for _, w in pairs), alignment)


def script_text(utterance: AlignedUtterance, frame_rate: float = FRAME_RATE) -> str:
    """The script whose entries are the utterance's: its words with speaker tags where the speaker
    changes, and a `<break time="..."/>` per break. Parsing it gives `utterance.entries` back."""
    parts, previous = [], None
    words = iter(utterance.words)
    for entry in utterance.entries:
        if not entry.tokens:
            parts.append(f'<break time="{entry.padding / frame_rate:g}s"/>')
            continue
        word = next(words)
        if word.speaker != previous:
            parts.append(SPEAKER_TAGS[word.speaker - 1])
            previous = word.speaker
        parts.append(entry.text)
    return " ".join(parts)
