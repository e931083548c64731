"""The generation loop (spec section 6): frames of audio codes from entries, one column a step.

This module is the host side: `Utterance` holds the state machine, the token buffers, the stop
rule and what a streaming caller sees (`FrameUpdate`s as frames complete), from an
`UtterancePlan`; `FrameLoop` drives one utterance alone. The tensor work of a frame is
`dia2.generation.kernels` (solo and batched), its defaults `dia2.generation.config`.

Column bookkeeping: the decoder output at column t predicts column t+1. A run prefills columns
0..P-1 in one call (P = prefix frames, or 1 for the lone bos column), then loops: sample the
action and audio of column t+1 from the output at column t, then step column t+1. No column is
run twice (a published quirk re-ran the last prefix column).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from dia2.data.grid import (
    cell_frames,
    delay_codes,
    drop_text,
    undelay_codes,
)
from dia2.generation.config import GenerationConfig
from dia2.generation.kernels import FrameKernels
from dia2.model.config import FRAME_RATE
from dia2.model.network import Dia2Model
from dia2.text.align import NEW_WORD_STEP_OFFSET
from dia2.text.state_machine import (
    MachineState,
    StateMachine,
    last_column,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prefix:
    """A voice prefix as the loop needs it: audio codes and the forced new_word steps.

    codes [K, P] undelayed Mimi codes; new_word_steps are decoder steps (the prefix rule's,
    `dia2.text.align.prefix_alignment`);
    `entries` (the prefix words, in order) go to the state machine before the script's.
    """

    codes: Tensor
    new_word_steps: tuple[int, ...]
    num_words: int

    @property
    def frames(self) -> int:
        return self.codes.shape[-1]


@dataclass
class FrameUpdate:
    """What one loop step produced, for streaming callers.

    `frames` [K, n] are the audio frames completed by this step (all codebooks known), `words`
    the (text, seconds) of words started at this step, `done` whether generation has ended,
    `truncated` whether it ended at the frame limit before the script did.
    """

    step: int
    frames: Tensor
    words: list[tuple[str, float]]
    done: bool = False
    truncated: bool = False


class UtterancePlan(NamedTuple):
    """What an `Utterance` starts from (`Dia2.plan` builds it, checked): its state machine and
    state (the entries to speak), its settings, the voice prefix, and the feed of a streamed
    script (None: the entries are the whole script). `draw_base` counts the frames of earlier
    parts of the same script, so a part never reuses their random draws."""

    machine: StateMachine
    machine_state: MachineState
    config: GenerationConfig
    prefix: Prefix | None = None
    feed: EntryFeed | None = None
    draw_base: int = 0


def loop_capacity(prefix_frames: int, config: GenerationConfig, context: int) -> int:
    """Columns one utterance can use: the prefix (or the lone bos column) plus max_frames (None:
    the model's context, runtime.max_context_steps)."""
    return max(1, prefix_frames) + (config.max_frames or context)


class Utterance:
    """The host side of one utterance: state machine, token buffers, stop rule and updates.

    It does no model work: a driver runs the model on what it asks for and hands back what the
    model gave. `FrameLoop` drives one utterance alone; the serving engine (`dia2.serving`)
    drives many, one row each in a batched step. Either way the sequence per frame is the same:

        prepare() until True  (the prefix's forced steps; a streamed script may need text first)
        out = prefill(prefill_columns());  action from out's last column;  first_update()
        loop: ready() -> text = advance(action) -> codes = audio(..., text) -> update = write(codes)
              until update.done;  then action, hidden, cb0 = head(next_column())
    """

    def __init__(self, model: Dia2Model, plan: UtterancePlan) -> None:
        machine, config, prefix = plan.machine, plan.config, plan.prefix
        self.machine, self.mstate, self.config = machine, plan.machine_state, config
        self.feed = plan.feed
        self.draw_base = plan.draw_base
        data = model.config.data
        self.delays = list(data.delays)
        self.max_delay = max(self.delays)
        self.prefix_frames = prefix.frames if prefix is not None else 0
        self.forced_steps = frozenset(prefix.new_word_steps) if prefix else frozenset()
        # Every prefix column is prefilled in one call, so its steps are forced (pad between the
        # prefix's words); forcing continues to the prefix's last word step if that lies later.
        self.last_forced_step = max(self.forced_steps, default=-1)
        if prefix is not None:
            self.last_forced_step = max(self.last_forced_step, prefix.frames - 2)
        self.prefix_words = prefix.num_words if prefix else 0
        self.capacity = loop_capacity(self.prefix_frames, config, model.config.runtime.max_context_steps)
        device = model.device
        self.branches = config.branches
        self.text = torch.empty(self.branches, 2, self.capacity, dtype=torch.long, device=device)
        self.text[:, 1] = machine.ids.pad
        self.text[0, 0, :1] = machine.ids.bos
        if self.branches > 1:
            self.text[1] = drop_text(self.text[0], machine.ids.zero, machine.ids.pad)
        self.audio, self.locked = self._audio_buffers(prefix, data.audio_bos_token_id, device)
        self.end_step: int | None = None
        self.truncated = False
        self.last_column = 0
        self.column = max(1, self.prefix_frames) - 1  # the last column prefilled or stepped
        self._prefilled_steps = 0
        self._words_reported = 0

    def _audio_buffers(self, prefix: Prefix | None, bos: int, device) -> tuple[Tensor, Tensor]:
        """Delayed audio [K, L] and the mask of cells generation must not overwrite: cells
        before their codebook's delay (bos) and the delayed prefix."""
        K, L = len(self.delays), self.capacity
        audio = torch.full((K, L), bos, dtype=torch.long, device=device)
        if prefix is not None:
            span = min(prefix.frames + self.max_delay, L)
            audio[:, :span] = delay_codes(prefix.codes.to(device), self.delays, bos)[:, :span]
        # Frames < 0 are the bos cells before each delay, frames 0..P-1 the prefix's.
        locked = cell_frames(self.delays, L, device=device) < self.prefix_frames
        return audio, locked

    def _columns(self, start: int, stop: int) -> Tensor:
        """Model input columns start..stop-1: [branches, C, n]."""
        audio = self.audio[:, start:stop].unsqueeze(0).expand(self.branches, -1, -1)
        return torch.cat([self.text[:, :, start:stop], audio], dim=1)

    def prepare(self) -> bool:
        """Run the state machine along the prefix (text of columns 1..P-1); False while a
        streamed script has not yet given the text that needs (call again when more arrived).

        A streamed script is fed at every step, as in the loop: the prefix's last words look
        ahead into the script's first ones (the second text stream).
        """
        if not self.ready():
            return False
        while self._prefilled_steps < self.column:
            if not self.ready():
                return False
            self._advance_machine(self._prefilled_steps, None)
            self._prefilled_steps += 1
        return True

    def prefill_columns(self) -> Tensor:
        """The columns one prefill runs (the prefix, or the lone bos column): [branches, C, P]."""
        return self._columns(0, self.column + 1)

    def first_update(self) -> FrameUpdate:
        """The update after the prefill: the prefix's frames (if kept) and words."""
        first = [self._completed_frames(c) for c in range(self.column + 1)]
        return FrameUpdate(self.column, torch.cat(first, dim=1), self._new_words())

    def ready(self) -> bool:
        """Whether the state machine can take its next step: a streamed script has the words
        it looks ahead to, or has ended (whole scripts always can)."""
        return self.feed is None or self.feed.fill(self.mstate, self.machine.second_stream_ahead)

    def advance(self, action: Tensor) -> Tensor:
        """Take the sampled action of the next column; returns its text [branches, 2]."""
        self._advance_machine(self.column, action)
        return self.text[:, :, self.column + 1]

    def _advance_machine(self, step: int, sampled: Tensor | None) -> None:
        forced = step <= self.last_forced_step
        if forced:
            action = self.machine.action_new_word if step in self.forced_steps else self.machine.action_pad
        else:
            action = int(sampled)  # the one host sync of a frame: the state machine needs it
        main, second = self.machine.process(self.mstate, step, action, forced=forced)
        # fill_ on one-element slices passes the ids as kernel arguments; assigning a Python int
        # to a 0-dim element would copy it from host memory and block on CUDA (a sync per write).
        self.text[0, 0, step + 1 : step + 2].fill_(main)
        self.text[0, 1, step + 1 : step + 2].fill_(second)
        if self.mstate.end_step is not None and self.end_step is None:
            self.end_step = self.mstate.end_step

    def write(self, codes: Tensor) -> FrameUpdate:
        """Store the sampled codes [K] of the next column (not over locked cells) and report."""
        t = self.column + 1
        self.audio[:, t] = torch.where(self.locked[:, t], self.audio[:, t], codes)
        self.last_column = self.column = t
        done = self._finished(t)
        return FrameUpdate(t - 1, self._completed_frames(t), self._new_words(), done, self.truncated)

    @property
    def draw_step(self) -> int:
        """The frame the next draws are for (the next column, after earlier parts' frames)."""
        return self.draw_base + self.column + 1

    def next_column(self) -> Tensor:
        """The column just written, as the next model input: [branches, C, 1]."""
        return self._columns(self.column, self.column + 1)

    def _completed_frames(self, column: int) -> Tensor:
        """Audio frames completed once `column` is written: frame column - max_delay."""
        frame = column - self.max_delay
        first_kept = 0 if self.config.include_prefix else self.prefix_frames
        if frame < first_kept:
            return self.audio.new_empty(len(self.delays), 0)
        return undelay_codes(self.audio[:, frame : column + 1], self.delays)

    def _new_words(self) -> list[tuple[str, float]]:
        """Words the state machine started since the last call, with start times in seconds.

        A word's new_word step s maps back to its first audio frame by the alignment rule
        (frame = s + 1 - NEW_WORD_STEP_OFFSET), so the times match the audio, and the prefix's
        frames are subtracted when it is cropped. A script word started in the prefix's last
        steps (the first free step is P - 1) is reported where its audio can begin, at frame P.
        """
        words = []
        skip = 0 if self.config.include_prefix else self.prefix_words
        origin = 0 if self.config.include_prefix else self.prefix_frames
        for i in range(self._words_reported, len(self.mstate.transcript)):
            text, step = self.mstate.transcript[i]
            if i >= skip:
                first = self.prefix_frames if i >= self.prefix_words else 0
                frame = max(first, step + 1 - NEW_WORD_STEP_OFFSET) - origin
                words.append((text, frame / FRAME_RATE))
        self._words_reported = len(self.mstate.transcript)
        return words

    def _finished(self, column: int) -> bool:
        if self.end_step is not None and column >= last_column(self.end_step, self.max_delay, self.machine.max_padding):
            return True
        if column >= self.capacity - 1:
            # Stopped before the end rule: the script, or the tail of its last word, is cut.
            self.truncated = True
            logger.warning("generation hit the %d-frame limit before the script ended: output truncated", self.capacity)
            return True
        return False

    def audio_codes(self) -> Tensor:
        """All frames generated so far (prefix cropped unless include_prefix): [K, F]."""
        first = 0 if self.config.include_prefix else self.prefix_frames
        return undelay_codes(self.audio[:, first : self.last_column + 1], self.delays)


class FrameLoop(Utterance):
    """Generate one utterance alone, column by column. Iterate to get `FrameUpdate`s.

    `seed` keys every random draw (with the frame and the stream drawn), so the same seed gives
    the same tokens however the utterance is run (alone, or in a serving batch).
    """

    def __init__(self, model: Dia2Model, plan: UtterancePlan, *, kernels: FrameKernels, seed: int) -> None:
        super().__init__(model, plan)
        self.model = model
        self.kernels = kernels
        self.state = kernels.new_state(self.branches, self.capacity)
        self.seed = torch.tensor([seed], dtype=torch.long, device=model.device)
        self._step = torch.zeros(1, dtype=torch.long, device=model.device)

    def _draw_step(self) -> Tensor:
        # fill_ passes the value as a kernel argument: no host-to-device copy, no sync.
        return self._step.fill_(self.draw_step)

    def __iter__(self) -> Iterator[FrameUpdate]:
        k = self.kernels
        ready = self.prepare()
        assert ready, "a FrameLoop's entry feed blocks until it can answer"
        out = self.model.prefill(self.prefill_columns(), self.state)
        action, hidden, cb0 = k.action(out, self.seed, self._draw_step()), out.hidden[:, -1], out.cb0_logits[:, -1]
        yield self.first_update()
        while True:
            self.ready()
            text = self.advance(action)
            update = self.write(k.audio(hidden, cb0, text, self.state, self.seed, self._step))
            yield update
            if update.done:
                return
            action, hidden, cb0 = k.head(self.next_column(), self.state, self.seed, self._draw_step())


class EntryFeed:
    """Entries of a script that arrives piece by piece (an iterator of entry lists).

    Before each step the loop asks for enough entries that the state machine decides exactly
    as it would with the whole script: more than k spoken entries queued (k = the look-ahead),
    or the end of the text. This feed blocks on its iterator until it can answer, so `fill`
    always returns True; the serving engine's feed (`dia2.serving`) never blocks and returns
    False while it waits.
    """

    def __init__(self, chunks: Iterator[list]) -> None:
        self._chunks = chunks
        self.exhausted = False

    def fill(self, state: MachineState, lookahead: int) -> bool:
        while not self.exhausted and needs_entries(state, lookahead):
            try:
                state.append_entries(next(self._chunks))
            except StopIteration:
                self.exhausted = True
        return True


def needs_entries(state: MachineState, lookahead: int) -> bool:
    """Whether the machine needs more entries to decide as it would with the whole script."""
    return sum(1 for e in state.entries if e.tokens) <= lookahead
