"""How well a tokenizer covers a language, and what that means for Dia2's text/audio pacing.

Dia2 feeds the text one token per frame (12.5 frames a second; spec section 5): a word of n
tokens occupies at least n frames of the text stream, and the whole of a script must fit in the
model's context (1500 frames, 2 minutes). A language the tokenizer splits finely therefore speaks
against a tighter budget. `coverage_report` measures, on the words of a corpus (each encoded on
its own, as the script parser encodes it: `dia2.text.script.encode_word`):

- tokens per word;
- the byte-fallback share. Dia2's tokenizer is GPT-2-style byte-level BPE: every text encodes,
  nothing is unknown, and a character its merges do not cover falls back to its UTF-8 bytes, one
  token each or in partial runs. A token is counted as byte fallback when its bytes are not
  valid UTF-8 on their own, i.e. it holds part of a multi-byte character (German "ü" split into
  0xC3 + 0xBC). Whole ASCII letters are not fallback, however short: they are counted apart as
  single-character tokens;
- the words split into the most tokens (the ones a new-language adapter must learn most about);
- with audio times: frames per token of speech (12.5 x spoken seconds / tokens), against the
  same figure for English with this tokenizer (12.5 / (2.5 words a second x its tokens per word
  on the shipped English prompts): the conversational rate `dia2-eval` assumes), and the share of
  words with more tokens than spoken frames (the text stream cannot keep up with them: the
  alignment delays them). Fewer than one frame per token means the text cannot keep pace at all.

The figures describe the tokenizer they are measured with: on the tiny demo tokenizer (512
tokens trained on five English lines, `dia2.tiny`) they are far worse than on the published
Dia2 tokenizer (49,152 base tokens), and say nothing about it.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

from dia2.text.script import Tokenizer, encode_word
from dia2.text.words import SpokenWord

FRAME_RATE = 12.5
"""Frames a second (the text stream advances one token per frame at most)."""
ENGLISH_WORDS_PER_SECOND = 2.5
"""Conversational English, 150 words a minute: the rate `dia2-eval` expects a clip to speak at."""
SMALL_VOCAB = 10_000
"""Below this many tokens a tokenizer is a test stand-in, not a production one (the report says so)."""
WORST_SHOWN = 10


@dataclass(frozen=True)
class SplitWord:
    """A word and the pieces its tokens hold (bytes shown as text where they decode)."""

    word: str
    tokens: int
    pieces: tuple[str, ...]


@dataclass(frozen=True)
class CoverageReport:
    """Tokenizer coverage of a language's words; pacing figures are None without audio times."""

    language: str | None
    vocab_size: int
    words: int
    tokens: int
    tokens_per_word: float
    byte_fallback_tokens: int
    byte_fallback_share: float
    single_character_share: float
    worst_words: tuple[SplitWord, ...]
    english_tokens_per_word: float
    english_frames_per_token: float
    frames_per_token: float | None = None
    tokens_per_second: float | None = None
    words_outrunning_frames: float | None = None

    @property
    def frames_per_token_vs_english(self) -> float | None:
        """This language's frames per token over English's (below 1: each token gets less time)."""
        if self.frames_per_token is None:
            return None
        return self.frames_per_token / self.english_frames_per_token

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["frames_per_token_vs_english"] = self.frames_per_token_vs_english
        return data


def token_bytes(tokenizer: Tokenizer, token_id: int) -> bytes:
    """The bytes a byte-level BPE token stands for (GPT-2's byte-to-character map inverted)."""
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    decoder = _byte_decoder()
    if all(ch in decoder for ch in piece):
        return bytes(decoder[ch] for ch in piece)
    return piece.encode("utf-8")  # an added token ([S1], (laughs)) is stored as plain text


def is_byte_fallback(data: bytes) -> bool:
    """Whether a token's bytes are part of a multi-byte UTF-8 character rather than whole characters."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def coverage_report(
    tokenizer: Tokenizer,
    words: Iterable[SpokenWord | str],
    language: str | None = None,
    english_text: str | None = None,
) -> CoverageReport:
    """Coverage of `words` (texts, or timed words for the pacing figures) by `tokenizer`.

    english_text: the English reference (default: the shipped dia2-eval prompts).
    """
    counts: Counter = Counter()
    encoded: dict[str, tuple[int, ...]] = {}
    spoken_seconds, timed, outrunning = 0.0, 0, 0
    for word in words:
        text = word.text if isinstance(word, SpokenWord) else word
        if text not in encoded:
            encoded[text] = encode_word(tokenizer, text)
        counts[text] += 1
        if isinstance(word, SpokenWord):
            seconds = max(word.end - word.start, 0.0)
            spoken_seconds += seconds
            timed += 1
            outrunning += len(encoded[text]) > seconds * FRAME_RATE
    if not counts:
        raise ValueError("no words to measure: the corpus holds no transcribed words")
    n_words = sum(counts.values())
    n_tokens = sum(len(encoded[w]) * n for w, n in counts.items())
    kinds = Counter()
    for text, n in counts.items():
        for token in encoded[text]:
            data = token_bytes(tokenizer, token)
            kinds["fallback"] += n * is_byte_fallback(data)
            kinds["single"] += n * (not is_byte_fallback(data) and len(data.decode("utf-8")) == 1)
    english = _english_tokens_per_word(tokenizer, english_text)
    english_fpt = FRAME_RATE / (ENGLISH_WORDS_PER_SECOND * english)
    pacing: dict[str, float | None] = {}
    if timed == n_words and spoken_seconds > 0:  # every word timed: a corpus, not a text
        pacing = {
            "frames_per_token": spoken_seconds * FRAME_RATE / n_tokens,
            "tokens_per_second": n_tokens / spoken_seconds,
            "words_outrunning_frames": outrunning / n_words,
        }
    return CoverageReport(
        language=language,
        vocab_size=len(tokenizer.get_vocab()),
        words=n_words,
        tokens=n_tokens,
        tokens_per_word=n_tokens / n_words,
        byte_fallback_tokens=kinds["fallback"],
        byte_fallback_share=kinds["fallback"] / n_tokens,
        single_character_share=kinds["single"] / n_tokens,
        worst_words=_worst(tokenizer, encoded),
        english_tokens_per_word=english,
        english_frames_per_token=english_fpt,
        **pacing,
    )


def coverage_text(report: dict[str, Any]) -> list[str]:
    """The report (`CoverageReport.as_dict`) as lines for reading."""
    lines = [
        f"tokenizer coverage ({report['language'] or 'language not given'}; {report['vocab_size']} tokens in the vocabulary)",
        f"  {report['words']} words, {report['tokens']} tokens: {report['tokens_per_word']:.2f} tokens per word "
        f"(English on this tokenizer: {report['english_tokens_per_word']:.2f})",
        f"  byte fallback: {report['byte_fallback_tokens']} tokens ({report['byte_fallback_share']:.1%}) hold part of a "
        f"character; {report['single_character_share']:.1%} are single characters",
    ]
    if report.get("frames_per_token") is not None:
        lines.append(
            f"  pacing: {report['frames_per_token']:.2f} frames of speech per token ({report['tokens_per_second']:.1f} "
            f"tokens a second; English at 150 words a minute: {report['english_frames_per_token']:.2f}, ratio "
            f"{report['frames_per_token_vs_english']:.2f}); {report['words_outrunning_frames']:.1%} of words have more "
            "tokens than spoken frames"
        )
        if report["frames_per_token"] < 1:
            lines.append("  WARNING: fewer than one frame per token: Dia2's text stream (one token a frame) cannot keep pace")
    worst = ", ".join(f"{w['word']} ({w['tokens']}: {'|'.join(w['pieces'])})" for w in report["worst_words"])
    lines.append(f"  split worst: {worst}")
    if report["vocab_size"] < SMALL_VOCAB:
        lines.append(
            f"  note: a {report['vocab_size']}-token tokenizer is a test stand-in (the tiny demo model's): these "
            "figures describe it, not the published Dia2 tokenizer (49,152 base tokens)"
        )
    return lines


def _worst(tokenizer: Tokenizer, encoded: dict[str, tuple[int, ...]]) -> tuple[SplitWord, ...]:
    """The distinct words with the most tokens (ties: more tokens per character first, then by text)."""
    ranked = sorted(encoded.items(), key=lambda item: (-len(item[1]), -len(item[1]) / max(len(item[0]), 1), item[0]))
    return tuple(
        SplitWord(word, len(ids), tuple(_show(token_bytes(tokenizer, t)) for t in ids)) for word, ids in ranked[:WORST_SHOWN]
    )


def _show(data: bytes) -> str:
    """A token's bytes as text, or as <xx> hex for bytes that are part of a character."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(f"<{b:02x}>" for b in data)


def _english_tokens_per_word(tokenizer: Tokenizer, english_text: str | None) -> float:
    if english_text is None:
        english_text = resources.files("dia2.evaluation").joinpath("prompts", "default.txt").read_text(encoding="utf-8")
    words = [w for line in english_text.splitlines() if line.strip() and not line.startswith("#")
             for w in line.replace("[S1]", " ").replace("[S2]", " ").split()]
    return sum(len(encode_word(tokenizer, w)) for w in words) / len(words)


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet inverted: printable bytes stand for themselves, the other 68
    bytes for the characters from U+0100 on, in byte order (every byte-level BPE uses this map)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1), *range(ord("\u00ae"), 256)]
    chars = {b: chr(b) for b in printable}
    for extra, b in enumerate(b for b in range(256) if b not in chars):
        chars[b] = chr(256 + extra)
    return {char: byte for byte, char in chars.items()}


def words_of_rows(rows: Sequence[dict[str, Any]]) -> list[SpokenWord]:
    """The timed words of corpus rows (`dia2.data.corpus` rows, or data prep's row dicts)."""
    return [SpokenWord(str(w["text"]), float(w["start"]), float(w["end"])) for row in rows for w in row["words"]]
