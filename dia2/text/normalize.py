"""Text normalisation per language: recogniser output -> training text, and texts -> words to compare.

Two uses, one set of rules:

- `normalize_transcript(words, language)`: what data prep does to Whisper's words before they
  become training text. Whisper writes numbers as digits, which a TTS model must learn to say
  from the words actually spoken: numbers are spelled out in the language (`dia2.text.numbers`),
  and a word that became several ("1990" -> "nineteen ninety") shares the original span in
  proportion to the words' lengths. Whisper sometimes emits punctuation as a word of its own
  (French "Bonjour !" comes out as "Bonjour" + "!"; dashes): it is attached to the word before
  it, so no entry is only punctuation. Quotation marks („“ « » ‹ ›, and " ) are not spoken
  and are dropped, the typographic apostrophe becomes ' (as the script parser does) and no-break
  spaces (French typography puts them before ? ! : ;) go. Other punctuation stays: it shapes
  prosody. Letters are never changed (no lower-casing, no accent folding).
- `comparable_words(text, language)`: what WER/CER and data prep's reference check compare:
  numbers spelled out the same way on both sides, case folded (German ß matches ss), hyphens
  split, punctuation removed; in languages with elision (fr, it, ca) the apostrophe splits words
  (l'homme -> l homme, so "l' homme" and "l'homme" agree), elsewhere it stays inside a word
  (don't).

Without a language (detected by Whisper, or not given) numbers keep their digits.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import replace

from dia2.text.numbers import verbalize_numbers
from dia2.text.words import SpokenWord

NORMALIZATION_VERSION = 1
"""Bump when the rules change: data prep keys its cache on it."""
ELISION_LANGUAGES = frozenset({"fr", "it", "ca"})
_QUOTES = re.compile("[\"\u201c\u201d\u201e\u201f\u00ab\u00bb\u2039\u203a]")
_NO_BREAK = re.compile("[\u00a0\u202f\u2007]")
_PUNCT = re.compile(r"[^\w\s']")


def clean_text(text: str) -> str:
    """Unicode-composed text without quotation marks and no-break spaces, with plain apostrophes."""
    text = unicodedata.normalize("NFC", text).replace("\u2019", "'")
    return _NO_BREAK.sub("", _QUOTES.sub("", text)).strip()


def comparable_words(text: str, language: str | None = None) -> list[str]:
    """Case-folded words without punctuation, numbers spelled out in `language`."""
    text = unicodedata.normalize("NFKC", text).replace("\u2019", "'")
    text = verbalize_numbers(text, language).replace("-", " ")
    if language in ELISION_LANGUAGES:
        text = text.replace("'", " ")
    words = _PUNCT.sub(" ", text.casefold()).split()
    return [w.strip("'") for w in words if w.strip("'")]


def normalize_transcript(words: Sequence[SpokenWord], language: str | None) -> list[SpokenWord]:
    """Recognised words in spoken order -> training words (see the module docstring); times kept."""
    out: list[SpokenWord] = []
    for word in words:
        text = clean_text(word.text)
        if not text:
            continue
        if not any(c.isalnum() for c in text):
            if out:  # punctuation on its own belongs to the word before it
                out[-1] = replace(out[-1], text=out[-1].text + text, end=max(out[-1].end, word.end))
            continue
        out += _split_span(word, verbalize_numbers(text, language).split())
    return out


def _split_span(word: SpokenWord, pieces: list[str]) -> list[SpokenWord]:
    """`word` as one word per piece, its span shared in proportion to the pieces' lengths."""
    if len(pieces) == 1:
        return [replace(word, text=pieces[0])]
    total = sum(len(p) for p in pieces)
    out, at = [], word.start
    for i, piece in enumerate(pieces):
        end = word.end if i == len(pieces) - 1 else at + (word.end - word.start) * len(piece) / total
        out.append(replace(word, text=piece, start=at, end=end))
        at = end
    return out
