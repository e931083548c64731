"""Cut a long script into parts that each fit one generation.

Dia2 speaks at most `runtime.max_context_steps` frames per utterance (about 2 minutes at 12.5
frames/s), so a longer script is generated part by part, each part conditioned on the end of the
previous part's audio. `split_script` makes the parts: it counts words exactly as the parser does
(`dia2.text.script.lex`; break tags are not words) and ends a part only at a boundary, before a
speaker tag (a turn) or after a word that ends a sentence (`.`, `!`, `?` or `…`, possibly followed
by closing quotes or brackets). It is greedy: each part takes every whole sentence and turn that
fits, up to the last boundary within the budget. Only a sentence longer than the budget is cut
inside, after its last comma, semicolon or colon within the budget, else at the budget, with a
warning.

The caller chooses `max_words` (from the context length and how fast its voices speak); this
module knows nothing of frames.

Each part is a valid script on its own: a part that does not open with a speaker tag gets the tag
in force at its first word, so parsing the parts one by one gives the whole script's words with
the same speakers. Breaks stay with the word they follow.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

from dia2.text.script import ScriptError, lex

logger = logging.getLogger(__name__)

# A break tag (whitespace allowed inside) or a run of text without whitespace. Once the whole script
# has lexed without error every `<` opens a tag, so these pieces cover all of its non-space text.
_PIECE_RE = re.compile(r"<[^<>]*>|[^\s<>]+")
_CLOSERS = "\"'\u201d\u2019)]}\u00bb"
_SENTENCE_END_RE = re.compile(f"[.!?\u2026][{re.escape(_CLOSERS)}]*$")
_CLAUSE_END_RE = re.compile(f"[,;:][{re.escape(_CLOSERS)}]*$")


@dataclass(frozen=True)
class _Atom:
    """The smallest piece of script a cut may fall before: at most one lexer item."""

    kind: str  # "word", "speaker", "break", or "" for text the parser drops (a lone ":")
    raw: str  # as written in the script
    value: str  # the parsed word or speaker tag ("" otherwise)
    glued: bool  # no whitespace between it and the previous atom


def split_script(script: str, max_words: int) -> list[str]:
    """Cut a script into parts of at most `max_words` words each, at turn or sentence boundaries.

    A script of at most `max_words` words comes back unchanged as `[script]`. Otherwise each part
    has its whitespace normalised to single spaces (tags and breaks verbatim), and every part after
    the first opens with a speaker tag unless the script has none. Raises ScriptError (a
    ValueError) for `max_words` < 1 and for a script the parser rejects (empty, only tags, a bad
    tag); a break longer than the parser's limit is left for the parse of its part to judge.
    """
    if max_words < 1:
        raise ScriptError(f"max_words must be at least 1 to cut a script into parts, got {max_words}")
    atoms = _atoms(script)
    if sum(atom.kind == "word" for atom in atoms) <= max_words:
        return [script]
    tagged = any(atom.kind == "speaker" for atom in atoms)
    parts, speaker = [], "[S1]"  # the parser's speaker for words before any tag
    cuts = _cut_points(atoms, max_words)
    for start, end in zip([0, *cuts], [*cuts, len(atoms)]):
        text = _join(atoms[start:end])
        if start > 0 and tagged and atoms[start].kind != "speaker":
            text = f"{speaker} {text}"
        parts.append(text)
        speaker = next((atom.value for atom in reversed(atoms[start:end]) if atom.kind == "speaker"), speaker)
    return parts


def _atoms(script: str) -> list[_Atom]:
    """The script as atoms, after the checks `parse_script` makes (same errors, same messages)."""
    if not isinstance(script, str):
        raise ScriptError(f"the script must be one string, got {type(script).__name__}")
    # The break limit is the parser's business when it parses each part (it may be configured).
    pending, seen_word = None, False
    for kind, value in lex(script, math.inf):
        if kind == "speaker":
            pending = value
        elif kind == "word":
            pending, seen_word = None, True
    if pending is not None:
        raise ScriptError(
            f"the script ends with the speaker tag {pending} and no word after it; "
            "remove the tag or add the words it introduces"
        )
    if not seen_word:
        raise ScriptError("the script has no words to speak (it is empty or holds only tags)")
    atoms = []
    for match in _PIECE_RE.finditer(script):
        glued = match.start() > 0 and not script[match.start() - 1].isspace()
        atoms.extend(_piece_atoms(match.group(), glued))
    return atoms


def _piece_atoms(piece: str, glued: bool) -> list[_Atom]:
    """Split one piece into atoms of at most one item each.

    A piece without whitespace lexes to several items only where normalisation splits it (`12:30`
    is two words); the split point is found by lexing prefixes, so it follows the parser's own rule
    and the separator stays with the earlier atom.
    """
    items = _items(piece)
    atoms = []
    while len(items) > 1:
        cut = next(i for i in range(len(piece) - 1, 0, -1) if _items(piece[:i]) == items[:1])
        atoms.append(_atom(items[0], piece[:cut], glued))
        piece, items, glued = piece[cut:], items[1:], True
    atoms.append(_atom(items[0] if items else ("", ""), piece, glued))
    return atoms


def _atom(item: tuple[str, object], raw: str, glued: bool) -> _Atom:
    kind, value = item
    return _Atom(kind, raw, value if isinstance(value, str) else "", glued)


def _items(text: str) -> list[tuple[str, object]]:
    try:
        return list(lex(text, math.inf))
    except ScriptError:  # a prefix cut through a tag: never the split point
        return []


def _cut_points(atoms: list[_Atom], max_words: int) -> list[int]:
    """Indices of the atoms that open parts 2, 3, ...: greedy, at the last boundary that fits."""
    cuts, start, in_long_sentence = [], 0, False
    words_left = sum(atom.kind == "word" for atom in atoms)
    while words_left > max_words:
        boundary = clause = budget = None
        count, last, tag_since_last = 0, None, False
        for j in range(start, len(atoms)):
            atom = atoms[j]
            # A part may end before atom j if it holds a word and no tag waits for a word after it.
            if atom.kind in ("word", "speaker") and last is not None and not tag_since_last:
                if atom.kind == "speaker" or _SENTENCE_END_RE.search(last.raw):
                    boundary = j
                if atom.kind == "word":
                    budget = j
                    if _CLAUSE_END_RE.search(last.raw):
                        clause = j
            if atom.kind == "word":
                if count == max_words:
                    break
                count, last, tag_since_last = count + 1, atom, False
            elif atom.kind == "speaker":
                tag_since_last = True
        if boundary is not None:
            cut, in_long_sentence = boundary, False
        else:
            cut = clause if clause is not None else budget
            if not in_long_sentence:
                logger.warning(
                    "the sentence starting %r is longer than the %d-word budget of a part; "
                    "it is cut inside, between words",
                    _first_words(atoms[start:]), max_words,
                )
            in_long_sentence = True
        words_left -= sum(atom.kind == "word" for atom in atoms[start:cut])
        cuts.append(cut)
        start = cut
    return cuts


def _first_words(atoms: list[_Atom], limit: int = 6) -> str:
    """Up to `limit` words of the sentence that opens `atoms`, for messages."""
    words = []
    for atom in atoms:
        if atom.kind == "word":
            words.append(atom.value)
            if len(words) == limit or _SENTENCE_END_RE.search(atom.raw):
                break
    return " ".join(words)


def _join(atoms: list[_Atom]) -> str:
    return "".join(atom.raw if atom.glued or i == 0 else f" {atom.raw}" for i, atom in enumerate(atoms))
