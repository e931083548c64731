"""Word-to-frame alignment (spec sections 6 and 7).

One rule turns timed words into frames, new_word steps and forced padding. The published runtime
applies it to voice prefixes; our design applies the very same function to training data, so the
timing a model is trained on is the timing it is prompted with.

The rule, with r = 12.5 frames/s and cur = 0 at the start:

    start_frame   = max(cur + 1, round(start * r))
    end_frame     = start_frame + num_tokens
    new_word_step = start_frame - 1 + 3
    next_frame    = max(end_frame + 1, round(next_word.start * r))   (last word: round(end * r))
    padding       = max(0, next_frame - start_frame - 1)
    cur           = end_frame

and, for training, the end of speech is one more new_word at next_frame(last) - 1 + 3.

Rounding uses Python's `round`, which rounds halves to even (2.5 -> 2, 6.5 -> 6, 7.5 -> 8). This
is deliberate: the published runtime is Python and uses `round`, so prefixes aligned here land on
exactly the frames the published runtime picks. Do not "fix" it to round-half-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from dia2.data.grid import FRAME_RATE

NEW_WORD_STEP_OFFSET = 3
"""new_word_step = start_frame - 1 + NEW_WORD_STEP_OFFSET; the published prefix path's offset."""


@dataclass(frozen=True)
class TimedWord:
    """A word's time span in seconds and how many text tokens it encodes to."""

    start: float
    end: float
    num_tokens: int


@dataclass(frozen=True)
class AlignedWord:
    """Frame positions of one word under the alignment rule."""

    start_frame: int  # first audio frame of the word
    end_frame: int  # start_frame + num_tokens: one frame per text token
    new_word_step: int  # decoder step whose action is new_word for this word
    padding: int  # forced pad frames after the word (the word's Entry.padding)
    next_frame: int  # where the following word may start at the earliest


@dataclass(frozen=True)
class Alignment:
    """The aligned words of one utterance, in order."""

    words: tuple[AlignedWord, ...]

    @property
    def new_word_steps(self) -> tuple[int, ...]:
        """Steps at which the words start, one per word."""
        return tuple(w.new_word_step for w in self.words)

    @property
    def end_of_speech_step(self) -> int:
        """The extra new_word step after the last word (spec section 7).

        With entries exhausted the state machine records it as end_step, which is how a trained
        model learns to end an utterance.
        """
        return self.words[-1].next_frame - 1 + NEW_WORD_STEP_OFFSET


def _frame(seconds: float, frame_rate: float) -> int:
    # Python's round (half to even), matching the published runtime; see the module docstring.
    return int(round(seconds * frame_rate))


def _check_words(words: Sequence[TimedWord]) -> None:
    if not words:
        raise ValueError("no words to align: an utterance needs at least one timed word")
    for i, word in enumerate(words):
        if not (math.isfinite(word.start) and math.isfinite(word.end)):
            raise ValueError(f"word {i} has a non-finite time span ({word.start}, {word.end})")
        if word.num_tokens < 1:
            raise ValueError(
                f"word {i} has {word.num_tokens} text tokens; every word must encode to at least one"
            )


def align_words(words: Sequence[TimedWord], frame_rate: float = FRAME_RATE) -> Alignment:
    """Apply the alignment rule to words in spoken order.

    words: N timed words (seconds, token counts) -> Alignment with N AlignedWords. Overlapping or
    out-of-order times (common in ASR output) are absorbed by the rule's max(): each word starts
    after the previous word's tokens have been emitted.
    """
    _check_words(words)
    aligned = []
    cur = 0
    for i, word in enumerate(words):
        start_frame = max(cur + 1, _frame(word.start, frame_rate))
        end_frame = start_frame + word.num_tokens
        following = words[i + 1].start if i + 1 < len(words) else word.end
        next_frame = max(end_frame + 1, _frame(following, frame_rate))
        aligned.append(
            AlignedWord(
                start_frame=start_frame,
                end_frame=end_frame,
                new_word_step=start_frame - 1 + NEW_WORD_STEP_OFFSET,
                padding=max(0, next_frame - start_frame - 1),
                next_frame=next_frame,
            )
        )
        cur = end_frame
    return Alignment(tuple(aligned))
