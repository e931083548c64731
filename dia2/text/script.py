"""The script side of the text stream (spec section 5): control ids, entries, script parsing.

A script is one string such as `[S1] Hi there. [S2] Hello! <break time="0.5s"/> (laughs)`.
Parsing turns it into entries, one per word (plus one per break), which the state machine
(`dia2.text.state_machine`) feeds to the model one new_word at a time.

The parse follows the published runtime: the typographic apostrophe becomes `'`, `:` becomes a
space, words are split on whitespace and on break tags, `[S1]`/`[S2]` mark the speaker of the next
word, and each word is encoded on its own. Input the published runtime would silently mangle
(an unknown tag, a malformed break) raises `ScriptError` here instead.

`ScriptParser` parses text that arrives piece by piece (an LLM streaming its reply, say) and gives
exactly the entries `parse_script` gives on the joined text. Pieces are joined as given, with no
separator, as LLM token streams expect: the spaces between words must be in the pieces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Protocol

from dia2.errors import Dia2Error
from dia2.model.config import FRAME_RATE, DataConfig

SPEAKER_TAGS = ("[S1]", "[S2]")

EXPECTED_WORDS_PER_SECOND = 2.5
"""The speaking rate an expected duration assumes: 150 words a minute, conversational English."""

MAX_BREAK_SECONDS = 60.0
"""Longest break accepted: half of the 2-minute context; anything longer is surely a typo."""

_TAG_RE = re.compile(r"<[^<>]*>")
_BREAK_RE = re.compile(r'<break\s+time="([0-9]+(?:\.[0-9]*)?)s"\s*/?>')
_BREAK_START_RE = re.compile(r"<\s*break\b", re.IGNORECASE)
_NEGATIVE_TIME_RE = re.compile(r'time\s*=\s*"\s*-')
_BRACKET_TAG_RE = re.compile(r"\[[^\[\]]*\]")


class ScriptError(Dia2Error, ValueError):
    """A script that cannot be spoken; the message names the offending text and the fix."""


class Tokenizer(Protocol):
    """What parsing needs from a tokenizer (a `transformers` tokenizer satisfies it)."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def convert_tokens_to_ids(self, tokens: str) -> Any: ...


@dataclass(frozen=True)
class TextTokenIds:
    """Text-stream control ids (spec section 5)."""

    bos: int  # first main-stream token of the conditional branch
    new_word: int  # marks a step that starts a word
    pad: int  # nothing to say at this step
    zero: int  # main-stream token of the unconditional (CFG) branch
    spk1: int  # id of `[S1]`
    spk2: int  # id of `[S2]`

    @classmethod
    def from_tokenizer(cls, data: DataConfig, tokenizer: Tokenizer) -> TextTokenIds:
        """Ids from the config's data block and the model's tokenizer.

        The published tokenizer reports bos 0, and the published runtime replaces a falsy bos
        with 1, which is what the model was run with; so do we. A tokenizer without the speaker
        tags gets new_word in their place, as in the published runtime.
        """
        return cls(
            bos=getattr(tokenizer, "bos_token_id", None) or 1,
            new_word=data.text_new_word_token_id,
            pad=data.text_pad_token_id,
            zero=data.text_zero_token_id,
            spk1=_special_token_id(tokenizer, "[S1]", data.text_new_word_token_id),
            spk2=_special_token_id(tokenizer, "[S2]", data.text_new_word_token_id),
        )


def _special_token_id(tokenizer: Tokenizer, token: str, fallback: int) -> int:
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if callable(get_vocab) and token not in get_vocab():
        return fallback
    token_id = tokenizer.convert_tokens_to_ids(token)
    # Without get_vocab, an unknown token shows up as None or as the unknown-token id.
    if token_id is None or token_id == getattr(tokenizer, "unk_token_id", None):
        return fallback
    return int(token_id)


@dataclass(frozen=True)
class Entry:
    """One unit the state machine consumes at a new_word: a word, or a break (no tokens)."""

    tokens: tuple[int, ...]  # text tokens spoken one per frame; empty for a break
    text: str  # the word as written ("" for a break), reported in the transcript
    padding: int  # frames of forced pad after the new_word

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", tuple(int(t) for t in self.tokens))
        if self.padding < 0:
            raise ValueError(f"Entry padding must be >= 0, got {self.padding}")


def encode_word(tokenizer: Tokenizer, word: str, speaker_tag: str | None = None) -> tuple[int, ...]:
    """Tokens of one word; with a speaker tag the text is "[S1] word", so the tokens start with
    the tag's id and the word takes its leading-space form, as in the published runtime."""
    text = f"{speaker_tag} {word}" if speaker_tag else word
    return tuple(int(t) for t in tokenizer.encode(text, add_special_tokens=False))


def _normalize(text: str) -> str:
    # Published normalisation: the tokenizer knows "'" but not "’"; ":" reads badly as a token.
    return text.replace("\u2019", "'").replace(":", " ")


def _complete_length(text: str) -> int:
    """Length of the longest prefix of `text` that ends on a word or tag boundary.

    A word is complete once whitespace follows it, a tag once its `>` has arrived. Whitespace
    inside an unclosed `<...` (`<break time="1s" />`) is no boundary.
    """
    cut, in_tag = 0, False
    for i, ch in enumerate(text):
        if ch == "<":
            in_tag = True
        elif ch == ">" and in_tag:
            in_tag, cut = False, i + 1
        elif ch.isspace() and not in_tag:
            cut = i + 1
    return cut


class ScriptParser:
    """Incremental script parser: feed text chunks, get entries as soon as they are complete.

    `feed(chunk)` returns the entries completed by the chunk; `finish()` flushes the last word and
    checks the script as a whole. The entries, in order, equal `parse_script` on the chunks
    joined with no separator, however the text was cut.

    prepend_s1_to_first_word: the published runtime prepends the `[S1]` id to the first word of a
        script unless its tokens already start with it, so a script opening with `[S2] hi` gets
        `[S1] [S2] hi` tokens. It is kept by default because the published models were run that
        way; pass False to leave the first word as written.
    max_break_seconds: longer breaks raise ScriptError.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        ids: TextTokenIds,
        *,
        prepend_s1_to_first_word: bool = True,
        max_break_seconds: float = MAX_BREAK_SECONDS,
        frame_rate: float = FRAME_RATE,
    ) -> None:
        self.tokenizer = tokenizer
        self.ids = ids
        self.prepend_s1_to_first_word = prepend_s1_to_first_word
        self.max_break_seconds = max_break_seconds
        self.frame_rate = frame_rate
        self._buffer = ""
        self._pending_speaker: str | None = None
        self._seen_word = False
        self._finished = False
        self._pieces = 0

    def feed(self, chunk: str) -> list[Entry]:
        """Add text; return the entries it completes (possibly none)."""
        if self._finished:
            raise RuntimeError("ScriptParser.feed() called after finish(); start a new parser")
        if not isinstance(chunk, str):
            raise ScriptError(f"script text must be str, got {type(chunk).__name__}")
        self._pieces += 1
        self._buffer += _normalize(chunk)
        cut = _complete_length(self._buffer)
        complete, self._buffer = self._buffer[:cut], self._buffer[cut:]
        return self._entries(complete)

    def finish(self) -> list[Entry]:
        """End of the script: return the last entries and check that there was something to say."""
        if self._finished:
            raise RuntimeError("ScriptParser.finish() called twice")
        entries = self._entries(self._buffer)
        self._buffer, self._finished = "", True
        _check_ending(self._pending_speaker, self._seen_word)
        return entries

    def _entries(self, text: str) -> list[Entry]:
        try:
            return self._parse(text)
        except ScriptError as exc:
            if self._pieces < 2 or "glued" not in str(exc):
                raise
            # A tag glued to a word in a stream: usually pieces sent without the spaces between them.
            raise ScriptError(f"{exc} (streamed pieces are joined as given, with no space added between them)") from None

    def _parse(self, text: str) -> list[Entry]:
        entries = []
        for kind, value in _lex(text, self.max_break_seconds):
            if kind == "speaker":
                self._pending_speaker = value
            elif kind == "word":
                entries.append(self._word_entry(value))
            else:
                padding = int(round(value * self.frame_rate))
                # The published runtime drops a break that rounds to no frame at all.
                if padding > 0:
                    entries.append(Entry((), "", padding))
        return entries

    def _word_entry(self, word: str) -> Entry:
        tokens = list(encode_word(self.tokenizer, word, self._pending_speaker))
        if not tokens:
            # A token-less entry is how a break is spelled; a word must never become one.
            raise ScriptError(f"the word {word!r} encodes to no tokens; remove it from the script")
        self._pending_speaker = None
        if not self._seen_word:
            self._seen_word = True
            if self.prepend_s1_to_first_word and tokens[0] != self.ids.spk1:
                tokens.insert(0, self.ids.spk1)
        # One forced pad frame per token: the word's tokens are emitted on those frames.
        return Entry(tuple(tokens), word, padding=len(tokens))


def _check_ending(pending_speaker: str | None, seen_word: bool) -> None:
    """The whole-script checks: no speaker tag without words after it, and something to say."""
    if pending_speaker is not None:
        raise ScriptError(
            f"the script ends with the speaker tag {pending_speaker} and no word after it; "
            "remove the tag or add the words it introduces"
        )
    if not seen_word:
        raise ScriptError("the script has no words to speak (it is empty or holds only tags)")


def check_script(script: str, max_break_seconds: float = MAX_BREAK_SECONDS) -> None:
    """Refuse, without a tokenizer (before a model loads), a script that parsing would refuse for
    its text: an unknown or glued tag, a malformed break, a tag with no word after it, no words.
    (A word that encodes to no tokens is found only by parsing.)"""
    pending, seen_word = None, False
    for kind, value in lex(script, max_break_seconds):
        if kind == "speaker":
            pending = value
        elif kind == "word":
            pending, seen_word = None, True
    _check_ending(pending, seen_word)


def expected_seconds(script: str) -> float:
    """How long `script` is expected to take to speak: its words at EXPECTED_WORDS_PER_SECOND, plus
    its breaks (an estimate, e.g. for a progress bar's time left; raises ScriptError as `lex` does)."""
    words = breaks = 0.0
    for kind, value in lex(script):
        if kind == "word":
            words += 1
        elif kind == "break":
            breaks += value
    return words / EXPECTED_WORDS_PER_SECOND + breaks


def lex(text: str, max_break_seconds: float = MAX_BREAK_SECONDS) -> Iterator[tuple[str, Any]]:
    """The parser's items of complete script text (its last word taken as ended), normalised as
    parsing does: ("word", str), ("speaker", tag), ("break", seconds). Raises ScriptError as
    parsing does for a bad tag; the whole-script checks of `ScriptParser.finish` are not made."""
    return _lex(_normalize(text), max_break_seconds)


def _lex(text: str, max_break_seconds: float) -> Iterator[tuple[str, Any]]:
    """Items of complete text, in order: ("word", str), ("speaker", tag), ("break", seconds)."""
    pos = 0
    for match in _TAG_RE.finditer(text):
        yield from _lex_words(text[pos : match.start()])
        yield "break", _break_seconds(match.group(), max_break_seconds)
        pos = match.end()
    yield from _lex_words(text[pos:])


def _lex_words(segment: str) -> Iterator[tuple[str, str]]:
    for ch in "<>":
        if ch in segment:
            raise ScriptError(
                f"stray {ch!r} in {segment.strip()!r}: the only angle-bracket tag is "
                '<break time="1.5s"/>; spell the symbol out'
            )
    for word in segment.split():
        if word in SPEAKER_TAGS:
            yield "speaker", word
            continue
        tag = _BRACKET_TAG_RE.search(word)
        if tag is not None and tag.group() in SPEAKER_TAGS:
            sides = [side for side, glued in (("before", tag.start() > 0), ("after", tag.end() < len(word))) if glued]
            raise ScriptError(f"speaker tag glued to text in {word!r}: put a space {' and '.join(sides)} {tag.group()}")
        if tag is not None:
            raise ScriptError(f"unknown tag {tag.group()!r} in {word!r}: the speaker tags are [S1] and [S2]")
        yield "word", word


def _break_seconds(tag: str, max_seconds: float) -> float:
    match = _BREAK_RE.fullmatch(tag)
    if match is None:
        if not _BREAK_START_RE.match(tag):
            raise ScriptError(f'unknown tag {tag!r}: the only angle-bracket tag is <break time="1.5s"/>')
        if _NEGATIVE_TIME_RE.search(tag):
            raise ScriptError(f"negative break duration in {tag!r}: a break lasts 0 seconds or more")
        raise ScriptError(f'malformed break tag {tag!r}: write it as <break time="1.5s"/> (seconds)')
    seconds = float(match.group(1))
    if seconds > max_seconds:
        raise ScriptError(f"break of {seconds} s in {tag!r} is longer than the {max_seconds} s allowed")
    return seconds


def parse_script(
    script: str,
    tokenizer: Tokenizer,
    ids: TextTokenIds,
    *,
    prepend_s1_to_first_word: bool = True,
    max_break_seconds: float = MAX_BREAK_SECONDS,
) -> list[Entry]:
    """Parse a whole script into entries (see `ScriptParser` for the options).

    Raises ScriptError for an empty script or one without words, an unknown tag (`[S3]`, `<foo>`),
    a malformed, negative or over-long break, or a speaker tag with no word after it.
    """
    if not isinstance(script, str):
        raise ScriptError(f"the script must be one string, got {type(script).__name__}")
    parser = ScriptParser(
        tokenizer, ids, prepend_s1_to_first_word=prepend_s1_to_first_word, max_break_seconds=max_break_seconds
    )
    return parser.feed(script) + parser.finish()


def parse_stream(
    chunks: Iterable[str],
    tokenizer: Tokenizer,
    ids: TextTokenIds,
    *,
    prepend_s1_to_first_word: bool = True,
    max_break_seconds: float = MAX_BREAK_SECONDS,
) -> Iterator[Entry]:
    """Entries of a script arriving as chunks (joined with no separator), each yielded as soon as
    it is complete."""
    parser = ScriptParser(
        tokenizer, ids, prepend_s1_to_first_word=prepend_s1_to_first_word, max_break_seconds=max_break_seconds
    )
    for chunk in chunks:
        yield from parser.feed(chunk)
    yield from parser.finish()
