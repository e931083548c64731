"""What a clip should say against what the recogniser heard: normalised words, WER and CER.

Both sides are normalised the same way before any comparison: a Dia2 script loses its speaker
tags (`[S1]`), non-verbal cues (`(laughs)`) and break tags, then both become
`dia2.text.normalize.comparable_words`: case-folded, the typographic apostrophe `'`, hyphens
split, other punctuation gone. Given a language, numbers are spelled out in it on both sides
("25" matches "fünfundzwanzig") and elision apostrophes split words in French, Italian and
Catalan; without one, numbers are compared as written (the shipped prompts write them as words).

The error rates are Levenshtein distances (substitutions, insertions and deletions cost 1)
divided by the reference length: WER over words, CER over the characters of the normalised
words joined by single spaces.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from dia2.text.normalize import comparable_words

_SCRIPT_MARKUP = re.compile(r"\[[^\[\]]*\]|\([^()]*\)|<[^<>]*>")


def spoken_text(script: str) -> str:
    """The words a Dia2 script asks to be spoken: speaker tags, non-verbal cues and break tags removed."""
    return " ".join(_SCRIPT_MARKUP.sub(" ", script).split())


def normalize_words(text: str, language: str | None = None) -> list[str]:
    """Case-folded words without punctuation (hyphens split), numbers spelled out in `language`."""
    return comparable_words(text, language)


def edit_distance(reference: Sequence, hypothesis: Sequence) -> int:
    """Fewest substitutions, insertions and deletions turning `reference` into `hypothesis`."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        current = [i]
        for j, hyp in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp)))
        previous = current
    return previous[-1]


def _rate(reference: Sequence, hypothesis: Sequence) -> float:
    # An empty reference: any heard word is wholly wrong, hearing nothing wholly right.
    if not reference:
        return float(len(hypothesis) > 0)
    return edit_distance(reference, hypothesis) / len(reference)


def word_error_rate(reference: str, heard: str, language: str | None = None) -> float:
    """Word edits per reference word of two plain texts (a script: `spoken_text` first), both
    normalised for `language`; may exceed 1 when words are added."""
    return _rate(normalize_words(reference, language), normalize_words(heard, language))


def char_error_rate(reference: str, heard: str, language: str | None = None) -> float:
    """Character edits per reference character of the normalised texts (words joined by one space)."""
    return _rate(" ".join(normalize_words(reference, language)), " ".join(normalize_words(heard, language)))
