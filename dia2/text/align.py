"""Word-to-frame alignment (spec sections 6 and 7): timed words -> frames and decoder steps.

Two rules live here side by side, each named for where it applies (docs/alignment.md writes them
out, marking which is published behaviour and which is ours):

- `prefix_alignment` (voice prefixes; published behaviour): what the published runtime forces
  for a voice prefix, the only prefix streams the published model has been conditioned on.
  Each word's padding runs until the next word, however long the pause; there are no break
  entries; the first word of a recording starts at frame 1 at the earliest.
- `training_alignment` (training rows; ours): every row is a text stream the state machine in
  its normal, unforced mode can produce (spec section 7, last paragraph): the first entry is
  popped at step initial_padding, pauses longer than max_padding are break entries, and the end
  of speech is capped where the machine would force it.

Nothing picks the training rule for a prefix: voice prefixes of every entry point (dia2-infer
--prefix-speaker-* and --voice, the engine, the server, the studio, the parts of a long script)
are aligned by `dia2.generation.prefix.prefix_plan`, which uses `prefix_alignment`.

Both rules keep the published relation between a word's first audio frame and its step,

    new_word_step = start_frame - 1 + 3      (NEW_WORD_STEP_OFFSET)

and r = 12.5 frames/s. With f_i the start frame of word i (n_i tokens):

Prefix rule (spec section 6; published). Per recording, cur = its first frame (0 for speaker 1;
for speaker 2's recording, which follows speaker 1's in the prefix, the frame it starts at):

    f_i    = max(cur + 1, round(start_i * r));  cur = f_i + n_i
    next_i = max(f_i + n_i + 1, round(start_{i+1} * r))   (last word of its recording: round(end_i * r))
    padding_i = next_i - f_i - 1

Speaker 2's words get the same +3 as speaker 1's: the published runtime gave them none, a quirk
the spec fixes (section 6: a plausible cause of "prefix speakers swapped"). Where speaker 1's
last word's tokens run past the start of speaker 2's recording, speaker 2's first word waits for
them (the published runtime would force a new_word the machine drops).

Training rule (ours). The machine pops an entry at step s with n forced pad frames and lets the
next one start at step s + n + 1 at the earliest; after a word it forces a new_word at step
s + max_padding + 1 (the budget, which a break does not reset). So:

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
- End of speech: one more new_word at frame min(max(f + n + 1, round(end * r)),
  f + max(n, max_padding) + 1) of the last word, the latest step inference allows (its budget
  forces the end there); the row keeps real audio after it (`dia2.data.teacher.tail_frames`).

Rounding uses Python's `round`, which rounds halves to even (2.5 -> 2, 6.5 -> 6, 7.5 -> 8). This
is deliberate: the published runtime is Python and uses `round`, so prefixes aligned here land on
exactly the frames the published runtime picks. Do not "fix" it to round-half-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from dia2.model.config import FRAME_RATE
from dia2.text.state_machine import PUBLISHED_MAX_PADDING
from dia2.text.words import SpokenWord

NEW_WORD_STEP_OFFSET = 3
"""new_word_step = start_frame - 1 + NEW_WORD_STEP_OFFSET; the published prefix path's offset."""


def frame_step(frame: int) -> int:
    """The decoder step whose new_word action starts an entry at audio frame `frame`."""
    return frame - 1 + NEW_WORD_STEP_OFFSET


@dataclass(frozen=True)
class AlignedWord:
    """Frame positions of one word under either rule."""

    start_frame: int  # first audio frame of the word
    end_frame: int  # start_frame + num_tokens: one frame per text token
    new_word_step: int  # decoder step whose action is new_word for this word
    next_frame: int  # where the next word (training rows: or the end of speech) starts

    @property
    def padding(self) -> int:
        """Pad frames from the word to next_frame: the entry padding of the prefix rule (spec
        section 6). Training rows keep the script parser's padding (one frame per token)."""
        return self.next_frame - self.start_frame - 1


@dataclass(frozen=True)
class AlignedBreak:
    """A pause the state machine cannot wait out on its own: a break entry of `frames` pad frames."""

    start_frame: int  # first silent frame
    frames: int  # the break entry's padding: what `<break time="frames / 12.5 s"/>` gives
    step: int  # decoder step whose new_word action starts the break
    before: int  # index of the word that follows it


@dataclass(frozen=True)
class Alignment:
    """The aligned words and breaks of one utterance, in order (a prefix has no breaks)."""

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
        """The extra new_word step after the last word of a training row (spec section 7).

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


def prefix_alignment(
    words: Sequence[SpokenWord],
    num_tokens: Sequence[int],
    frame_rate: float = FRAME_RATE,
    speaker_2_frame: int | None = None,
) -> Alignment:
    """The published prefix rule (module docstring): words of a voice prefix -> Alignment.

    words: N timed words (seconds from the start of the prefix) and num_tokens: their N text-token
    counts -> N AlignedWords, no breaks; each word's `padding` runs until the next word.
    speaker_2_frame: the frame at which speaker 2's recording starts when the prefix is two
    recordings (speaker 1's words, then speaker 2's), each aligned as its own file, as the
    published runtime does; None for one recording (one speaker, or both in one recording).
    """
    _check_words(words, num_tokens)
    split = len(words)
    if speaker_2_frame is not None:
        split = next((i for i, w in enumerate(words) if w.speaker == 2), len(words))
    aligned = _recording(words[:split], num_tokens[:split], frame_rate, cursor=0)
    if split < len(words):
        cursor = max(speaker_2_frame, aligned[-1].end_frame if aligned else 0)
        aligned += _recording(words[split:], num_tokens[split:], frame_rate, cursor)
    return Alignment(tuple(aligned))


def _recording(
    words: Sequence[SpokenWord], num_tokens: Sequence[int], frame_rate: float, cursor: int
) -> list[AlignedWord]:
    """The published rule over one recording's words, cur starting at `cursor`."""
    aligned = []
    for i, (word, count) in enumerate(zip(words, num_tokens)):
        start = max(cursor + 1, _frame(word.start, frame_rate))
        end = start + count
        following = words[i + 1].start if i + 1 < len(words) else word.end
        aligned.append(AlignedWord(start, end, frame_step(start), max(end + 1, _frame(following, frame_rate))))
        cursor = end
    return aligned


def training_alignment(
    words: Sequence[SpokenWord],
    num_tokens: Sequence[int],
    frame_rate: float = FRAME_RATE,
    max_padding: int = PUBLISHED_MAX_PADDING,
) -> Alignment:
    """The training rule (module docstring): words of a training row -> Alignment.

    words: N timed words (seconds) and num_tokens: their N text-token counts (one frame each) ->
    Alignment with N AlignedWords and the breaks the pauses need. Overlapping or out-of-order
    times (common in ASR output) are absorbed by the rule's max(): each word starts after the
    previous word's tokens have been emitted.
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
        else:
            wanted = min(_frame(word.end, frame_rate), latest)
        following = max(earliest, wanted)
        if following > latest:
            pause = min(max(earliest, _frame(word.end, frame_rate)), latest)
            breaks.append(AlignedBreak(pause, following - pause, frame_step(pause), i + 1))
        aligned.append(AlignedWord(start, start + count, frame_step(start), following))
        start = following
    return Alignment(tuple(aligned), tuple(breaks))
