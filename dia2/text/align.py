"""Word-to-frame alignment (spec sections 6 and 7): timed words -> frames and decoder steps that
inference itself can reach.

One rule turns timed words into frames, new_word steps and breaks. Voice prefixes and training
rows both go through it, so the timing a model is trained on is the timing it is prompted with.
The rule keeps the published relation between a word's first audio frame and its step,

    new_word_step = start_frame - 1 + 3      (NEW_WORD_STEP_OFFSET)

and places every word, pause and end of speech where the state machine in its normal, unforced
mode (initial_padding 2, max_padding 6) can put them. An entry (word or break) popped at step s
with n forced pad frames lets the next one start at step s + n + 1 at the earliest, and after a
word the machine forces a new_word at step s + max_padding + 1 (the budget, which a break does
not reset). So, with r = 12.5 frames/s and f_i the start frame of word i (n_i tokens):

- First word: inference pops the first entry at step initial_padding = 2, i.e. at frame 0. The
  audio is real, so the word stays where it is heard, f_0 = round(start_0 * r); any silence
  before it becomes a leading break entry of f_0 frames (popped at step 2, frame 0), exactly
  what a script opening with `<break time="..."/>` gives. Trimming the leading frames instead
  would move the onset and cut the lead-in that protects it from ASR timing error.
- Next word: g = max(f_i + n_i + 1, round(start_{i+1} * r)). Without a break the machine allows
  g - f_i in [n_i + 1, max(n_i, max_padding) + 1]. A longer pause becomes a break entry that
  starts where word i's audio ends, b = clamp(round(end_i * r), f_i + n_i + 1,
  f_i + max(n_i, max_padding) + 1), and lasts g - b frames: the budget is spent by then, so the
  machine starts word i + 1 at exactly step g + 2.
- End of speech (training): one more new_word at frame min(max(f + n + 1, round(end * r)),
  f + max(n, max_padding) + 1) of the last word, the latest step inference allows (its budget
  forces the end there); the row keeps real audio after it (`dia2.data.teacher.tail_frames`).
- A voice prefix of P frames instead continues at frame P: the gap from its last word to P gets
  a break like any pause, so the script's first word starts after the prefix audio and the state
  the machine hands over at the prefix end is one unforced decoding reaches.

Rounding uses Python's `round`, which rounds halves to even (2.5 -> 2, 6.5 -> 6, 7.5 -> 8). This
is deliberate: the published runtime is Python and uses `round`, so prefixes aligned here land on
exactly the frames the published runtime picks. Do not "fix" it to round-half-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from dia2.data.grid import FRAME_RATE
from dia2.text.state_machine import PUBLISHED_MAX_PADDING
from dia2.text.words import SpokenWord

NEW_WORD_STEP_OFFSET = 3
"""new_word_step = start_frame - 1 + NEW_WORD_STEP_OFFSET; the published prefix path's offset."""


def frame_step(frame: int) -> int:
    """The decoder step whose new_word action starts an entry at audio frame `frame`."""
    return frame - 1 + NEW_WORD_STEP_OFFSET


@dataclass(frozen=True)
class AlignedWord:
    """Frame positions of one word under the alignment rule."""

    start_frame: int  # first audio frame of the word
    end_frame: int  # start_frame + num_tokens: one frame per text token
    new_word_step: int  # decoder step whose action is new_word for this word
    next_frame: int  # where the next word (or the end of speech, or the prefix end) starts


@dataclass(frozen=True)
class AlignedBreak:
    """A pause the state machine cannot wait out on its own: a break entry of `frames` pad frames."""

    start_frame: int  # first silent frame
    frames: int  # the break entry's padding: what `<break time="frames / 12.5 s"/>` gives
    step: int  # decoder step whose new_word action starts the break
    before: int  # index of the word that follows it (len(words) for one that ends a prefix)


@dataclass(frozen=True)
class Alignment:
    """The aligned words and breaks of one utterance, in order."""

    words: tuple[AlignedWord, ...]
    breaks: tuple[AlignedBreak, ...] = ()

    @property
    def new_word_steps(self) -> tuple[int, ...]:
        """Steps at which the words start, one per word."""
        return tuple(w.new_word_step for w in self.words)

    @property
    def action_steps(self) -> tuple[int, ...]:
        """Every step whose action is new_word: the words' and the breaks', in order."""
        return tuple(sorted((*self.new_word_steps, *(b.step for b in self.breaks))))

    @property
    def end_of_speech_step(self) -> int:
        """The extra new_word step after the last word (spec section 7).

        With entries exhausted the state machine records it as end_step, which is how a trained
        model learns to end an utterance.
        """
        return frame_step(self.words[-1].next_frame)


def _frame(seconds: float, frame_rate: float) -> int:
    # Python's round (half to even), matching the published runtime; see the module docstring.
    return round(seconds * frame_rate)


def _check_words(words: Sequence[SpokenWord], num_tokens: Sequence[int]) -> None:
    if not words:
        raise ValueError("no words to align: an utterance needs at least one timed word")
    if len(num_tokens) != len(words):
        raise ValueError(f"{len(words)} words but {len(num_tokens)} token counts; give one count per word")
    for i, (word, count) in enumerate(zip(words, num_tokens)):
        if not (math.isfinite(word.start) and math.isfinite(word.end)):
            raise ValueError(f"word {i} has a non-finite time span ({word.start}, {word.end})")
        if count < 1:
            raise ValueError(f"word {i} has {count} text tokens; every word must encode to at least one")


def align_words(
    words: Sequence[SpokenWord],
    num_tokens: Sequence[int],
    frame_rate: float = FRAME_RATE,
    max_padding: int = PUBLISHED_MAX_PADDING,
    continue_at: int | None = None,
) -> Alignment:
    """Apply the alignment rule (module docstring) to words in spoken order.

    words: N timed words (seconds) and num_tokens: their N text-token counts (one frame each) ->
    Alignment with N AlignedWords and the breaks the pauses need. Overlapping or out-of-order
    times (common in ASR output) are absorbed by the rule's max(): each word starts after the
    previous word's tokens have been emitted.
    continue_at: for a voice prefix, its length P in frames: the speech continues (with the
    script) at frame P instead of ending after the last word.
    """
    _check_words(words, num_tokens)
    aligned: list[AlignedWord] = []
    start = max(0, _frame(words[0].start, frame_rate))
    breaks = [AlignedBreak(0, start, frame_step(0), 0)] if start > 0 else []
    for i, (word, count) in enumerate(zip(words, num_tokens)):
        earliest = start + count + 1
        latest = start + max(count, max_padding) + 1  # the machine forces a new_word here
        if i + 1 < len(words):
            wanted = _frame(words[i + 1].start, frame_rate)
        elif continue_at is not None:
            wanted = continue_at
        else:
            wanted = min(_frame(word.end, frame_rate), latest)
        following = max(earliest, wanted)
        if following > latest:
            pause = min(max(earliest, _frame(word.end, frame_rate)), latest)
            breaks.append(AlignedBreak(pause, following - pause, frame_step(pause), i + 1))
        aligned.append(AlignedWord(start, start + count, frame_step(start), following))
        start = following
    return Alignment(tuple(aligned), tuple(breaks))
