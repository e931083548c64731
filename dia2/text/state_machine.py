"""The text-stream state machine (spec section 5), exact to the published runtime.

At every decoder step t the model samples an action (1 = start a new word, 0 = pad). The machine
turns that action, plus the words still to say, into the two text tokens of column t + 1: the
main stream (new_word, then the word's tokens one per frame, pad in between) and the second,
look-ahead stream (with second_stream_ahead = k > 0, a later word's tokens, so the model can plan
prosody; with k = 0 a copy of the main stream).

The machine also paces speech: after a word it forces `entry.padding` pad frames, and once
`max_padding` frames pass without a word it forces one. In forced mode (teacher forcing, voice
prefixes) the given action is kept, so the same code produces the text of training grids and of
inference, and the two cannot drift apart. For training rows forced mode is no licence for
timings the normal mode cannot produce: the training rule (`dia2.text.align`) only forces steps
the unforced machine would accept, so either mode gives a row the same text. Voice prefixes are
forced as the published runtime forces them, which the normal mode need not reproduce.

The configuration (`StateMachine`) is frozen; the per-utterance state (`MachineState`) is an
explicit object owned by the caller, so a server session can hold one per stream.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Collection, Iterable, Sequence

from dia2.model.config import DataConfig
from dia2.text.script import Entry, TextTokenIds

PUBLISHED_MAX_PADDING = 6
"""The published runtime hard-codes 6; the config's `data.max_pad` (8) is not used by it."""

PUBLISHED_INITIAL_PADDING = 2
"""Pad frames forced before the first word by the published runtime; `GenerationConfig` and the
training rows both start from it, so training text matches what inference feeds."""


def last_column(end_step: int, max_delay: int, max_padding: int) -> int:
    """The last column decoding generates once the machine has set `end_step` (spec section 6):
    max(delay) + max_padding columns later, so the delayed codebooks finish the last word's
    audio. The stop rule of the frame loop and the training tail both derive from this."""
    return end_step + max_delay + max_padding


@dataclass
class MachineState:
    """Mutable per-utterance state of the state machine."""

    entries: deque[Entry]  # words (and breaks) not yet started
    padding_budget: int  # pad frames left before a new word is forced
    forced_padding: int  # pad frames left that must follow the current word
    pending: deque[int] = field(default_factory=deque)  # current word's tokens not yet emitted
    lookahead: deque[int] = field(default_factory=deque)  # second-stream tokens not yet emitted
    end_step: int | None = None  # first step that asked for a word after the entries ran out
    transcript: list[tuple[str, int]] = field(default_factory=list)  # (word, new_word step)

    def append_entries(self, entries: Iterable[Entry]) -> None:
        """Add words to say, e.g. as a streamed script arrives.

        Must happen before the entries run out: once end_step is set the utterance is ending
        (decoding stops max(delay) + max_padding frames later), so late words are refused.
        """
        if self.end_step is not None:
            raise ValueError(
                f"speech already ended at step {self.end_step}; entries must be appended before the "
                "machine runs out of words"
            )
        self.entries.extend(entries)


@dataclass(frozen=True)
class StateMachine:
    """Configuration of the state machine; `process` advances a `MachineState` by one step."""

    ids: TextTokenIds
    second_stream_ahead: int = 0  # k: the second stream carries the k-th following word
    max_padding: int = PUBLISHED_MAX_PADDING  # pad frames after a word before one is forced
    initial_padding: int = PUBLISHED_INITIAL_PADDING  # pad frames forced at the start of an utterance
    action_new_word: int = 1  # action id meaning "start a word"
    action_pad: int = 0  # action id meaning "no new word"

    def __post_init__(self) -> None:
        if self.second_stream_ahead < 0:
            raise ValueError(f"second_stream_ahead must be >= 0, got {self.second_stream_ahead}")

    @classmethod
    def from_config(cls, data: DataConfig, ids: TextTokenIds, initial_padding: int = PUBLISHED_INITIAL_PADDING) -> StateMachine:
        """The machine of a checkpoint: k and the action ids from its data block."""
        return cls(
            ids=ids,
            second_stream_ahead=data.second_stream_ahead,
            initial_padding=initial_padding,
            action_new_word=data.action_new_word_token_id,
            action_pad=data.action_pad_token_id,
        )

    def new_state(self, entries: Iterable[Entry] = ()) -> MachineState:
        """A fresh state: both padding counters start at initial_padding."""
        return MachineState(
            entries=deque(entries), padding_budget=self.initial_padding, forced_padding=self.initial_padding
        )

    def process(self, state: MachineState, step: int, action: int, forced: bool = False) -> tuple[int, int]:
        """Advance by one decoder step; returns (main, second), the text of column step + 1.

        action is the sampled action id (action_new_word starts a word; anything else is pad).
        forced=True keeps the action instead of applying the padding rules (it still yields to
        the pending tokens of the current word).
        """
        # Spec step 1: any action other than new_word, including ids outside the action vocab, is pad.
        token = self.ids.new_word if action == self.action_new_word else self.ids.pad
        token = self._constrain(state, token, forced)
        if token == self.ids.new_word:
            token = self._start_word(state, step)
        output = self._emit(state, token)
        return self._multiplex(state, output)

    def _constrain(self, state: MachineState, token: int, forced: bool) -> int:
        """Spec step 2: the current word must be fully emitted; then the padding rules."""
        if state.pending:
            return self.ids.pad
        if forced:
            return token
        if state.forced_padding > 0:
            return self.ids.pad
        if state.padding_budget <= 0:
            return self.ids.new_word
        return token

    def _start_word(self, state: MachineState, step: int) -> int:
        """Spec step 3: consume the next entry; returns the token the step continues with."""
        if not state.entries:
            token = self.ids.pad
            # With k > 0 the end of speech is itself marked by one last new_word (published).
            if self.second_stream_ahead and state.end_step is None:
                token = self.ids.new_word
            if state.end_step is None:
                state.end_step = step
            return token
        entry = state.entries.popleft()
        state.forced_padding = entry.padding
        if not entry.tokens:
            return self.ids.pad  # a break: silence for entry.padding frames, no word marker
        state.transcript.append((entry.text, step))
        state.pending.extend(entry.tokens)
        if self.second_stream_ahead:
            state.lookahead.extend(_kth_spoken_entry(state.entries, self.second_stream_ahead))
        state.padding_budget = self.max_padding
        return self.ids.new_word

    def _emit(self, state: MachineState, token: int) -> int:
        """Spec step 4: a pad step counts down both counters and emits the next pending token."""
        if token == self.ids.new_word:
            return token
        if state.padding_budget > 0:
            state.padding_budget -= 1
        if state.forced_padding > 0:
            state.forced_padding -= 1
        return state.pending.popleft() if state.pending else self.ids.pad

    def _multiplex(self, state: MachineState, output: int) -> tuple[int, int]:
        """Spec step 5: with k > 0 new_word moves to the second stream and the main stream
        starts the word at once; otherwise the second stream plays the look-ahead tokens."""
        if not self.second_stream_ahead:
            return output, output
        if output == self.ids.new_word:
            return (state.pending.popleft() if state.pending else self.ids.pad), self.ids.new_word
        return output, (state.lookahead.popleft() if state.lookahead else self.ids.pad)


def _kth_spoken_entry(entries: Iterable[Entry], k: int) -> tuple[int, ...]:
    """Tokens of the k-th entry that has tokens (breaks skipped), or () if there are fewer."""
    seen = 0
    for entry in entries:
        if entry.tokens:
            seen += 1
            if seen == k:
                return entry.tokens
    return ()


def drive_forced(
    machine: StateMachine, state: MachineState, new_word_steps: Collection[int], steps: range
) -> tuple[list[int], list[int]]:
    """Run `steps` in forced mode: new_word at new_word_steps, pad elsewhere.

    Returns (main, second), one token each per step (the text of columns steps.start + 1 ...).
    Raises ValueError when a new_word step arrives while the previous word still has tokens to
    emit: the machine would silently turn it into pad, and the grid's action targets would then
    disagree with its text.
    """
    main, second = [], []
    for step in steps:
        is_new_word = step in new_word_steps
        if is_new_word and state.pending:
            raise ValueError(
                f"new_word at step {step} while the previous word still has {len(state.pending)} "
                "token(s) to emit; space new_word steps at least len(tokens) + 1 apart"
            )
        action = machine.action_new_word if is_new_word else machine.action_pad
        m, s = machine.process(state, step, action, forced=True)
        main.append(m)
        second.append(s)
    return main, second


def forced_text_streams(
    machine: StateMachine, entries: Sequence[Entry], new_word_steps: Sequence[int], num_columns: int
) -> tuple[list[int], list[int]]:
    """Text rows of a teacher-forced grid of num_columns columns (spec section 7).

    Column 0 is (bos, pad), as at the start of decoding; column t + 1 is the machine's output at
    step t, forced to new_word exactly at new_word_steps (the aligned word steps, then the end-of-
    speech step) and pad elsewhere. Returns (main[num_columns], second[num_columns]).
    """
    if num_columns < 1:
        raise ValueError(f"num_columns must be >= 1, got {num_columns}")
    steps = list(new_word_steps)
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"new_word_steps must be strictly increasing, got {steps}")
    if steps and not 0 <= steps[0] <= steps[-1] < num_columns - 1:
        raise ValueError(
            f"new_word_steps must lie in [0, {num_columns - 2}] for a grid of {num_columns} columns, got {steps}"
        )
    if len(steps) > len(entries) + 1:
        raise ValueError(
            f"{len(steps)} new_word steps for {len(entries)} entries: at most one step per entry "
            "plus the end-of-speech step"
        )
    state = machine.new_state(entries)
    main, second = drive_forced(machine, state, frozenset(steps), range(num_columns - 1))
    return [machine.ids.bos, *main], [machine.ids.pad, *second]
