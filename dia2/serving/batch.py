"""The tensor work of one engine frame, over cache rows 0..R-1, eager or as CUDA graphs.

`BatchKernels.head` runs the decoder on every row's next column (each row at its own position)
and draws each utterance's next action; `BatchKernels.audio` draws codebook 0 and then every
depformer stage of each utterance's next column. Both are pure functions of tensors: which rows
make which utterance (`Rows`), each row's adapter, each utterance's sampling settings, seed and
draw step (`FrameInputs`). Draws are keyed by seed and step (`dia2.generation.sampling`), so an
utterance computed beside others, or beside rows that are not in use, draws what it draws alone.

`GraphedBatchKernels` captures each function into one CUDA graph at the engine's full size:
every cache row and every slot, those not in use computed and ignored (the "masked" slots), so a
frame costs two graph launches however many requests share it. A graph is bound to the engine's
buffers and caches, which never move; it is captured again when the adapters' hooks change.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from dia2.generation.graphs import Captured, check_capturable, state_restorer
from dia2.generation.loop import Rows, sample_audio
from dia2.generation.sampling import RowSampling, sample_action
from dia2.model.network import DecodeState, Dia2Model

if TYPE_CHECKING:
    from dia2.model.lora_bank import LoraBank


@dataclass(frozen=True)
class FrameInputs:
    """What one frame needs besides the model inputs: J utterances over R rows."""

    rows: Rows
    adapters: Tensor  # [R] long: each row's adapter in the bank (0: none)
    seed: Tensor  # [J] long
    step: Tensor  # [J] long: the frame each utterance draws for
    text: RowSampling  # [J]: how each draws its action
    audio: RowSampling  # [J]: how each draws its codes

    def tensors(self) -> tuple[Tensor, ...]:
        """Every tensor, flat (a graph's static inputs)."""
        sampling = lambda s: tuple(getattr(s, f.name) for f in fields(s) if f.name != "width")
        r = self.rows
        return (r.cond, r.uncond, r.owner, self.adapters, self.seed, self.step, *sampling(self.text), *sampling(self.audio))

    def like(self, tensors: tuple[Tensor, ...]) -> FrameInputs:
        """These inputs with their tensors replaced (in `tensors()` order)."""
        cond, uncond, owner, adapters, seed, step, *rest = tensors
        return FrameInputs(
            Rows(cond, uncond, owner), adapters, seed, step,
            RowSampling(*rest[:4], self.text.width), RowSampling(*rest[4:], self.audio.width),
        )


class BatchKernels:
    """A frame's tensor work for a serving batch (eager)."""

    def __init__(self, model: Dia2Model) -> None:
        self.model = model
        data = model.config.data
        self.banned_cb0 = torch.tensor([data.audio_bos_token_id, data.audio_pad_token_id], device=model.device)
        self.bank: LoraBank | None = None

    def routed(self, adapters: Tensor) -> AbstractContextManager:
        """Each row through its adapter, while the bank holds any (under graphs: as at capture,
        which happens again when the bank's hooks change)."""
        if self.bank is None or not self.bank.names:
            return nullcontext()
        return self.bank.routed(adapters)

    def head(self, columns: Tensor, state: DecodeState, inputs: FrameInputs) -> tuple[Tensor, Tensor, Tensor]:
        """columns [R, C, 1] at state's per-row positions -> (action [J], hidden [R, D], cb0 logits [R, V])."""
        with self.routed(inputs.adapters):
            out = self.model.step(columns, state)
        r = inputs.rows
        action = sample_action(out.action_logits[:, -1], r.cond, r.uncond, inputs.text, inputs.seed, inputs.step)
        return action, out.hidden[:, -1], out.cb0_logits[:, -1]

    def audio(self, hidden: Tensor, cb0_logits: Tensor, text: Tensor, state: DecodeState, inputs: FrameInputs) -> Tensor:
        """Codes [J, K] of each utterance's next column from the rows' hidden [R, D], cb0 logits
        [R, V] and next-column text [R, 2]."""
        with self.routed(inputs.adapters):
            return sample_audio(
                self.model, hidden, cb0_logits, text, state, inputs.rows, inputs.audio, inputs.seed, inputs.step,
                self.banned_cb0,
            )


class GraphedBatchKernels(BatchKernels):
    """BatchKernels replayed from CUDA graphs, at one fixed size (all rows, all slots).

    The engine must call with the same state storage every time (its caches never move) and
    with inputs of the fixed size; graphs are captured on first use and again after the
    adapter bank's hooks change (`LoraBank.version`).
    """

    def __init__(self, model: Dia2Model) -> None:
        check_capturable(model)
        super().__init__(model)
        self._head: Captured | None = None
        self._audio: Captured | None = None
        self._version: int | None = None

    def _current(self) -> None:
        version = self.bank.version if self.bank is not None else 0
        if version != self._version:
            self._head = self._audio = None
            self._version = version

    def head(self, columns: Tensor, state: DecodeState, inputs: FrameInputs) -> tuple[Tensor, Tensor, Tensor]:
        self._current()
        if self._head is None:
            fn = lambda col, *t: BatchKernels.head(self, col, state, inputs.like(t))
            self._head = Captured(fn, (columns, *inputs.tensors()), state_restorer(state), self.model.device)
        return self._head(columns, *inputs.tensors())

    def audio(self, hidden: Tensor, cb0_logits: Tensor, text: Tensor, state: DecodeState, inputs: FrameInputs) -> Tensor:
        self._current()
        if self._audio is None:
            fn = lambda h, c, x, *t: BatchKernels.audio(self, h, c, x, state, inputs.like(t))
            self._audio = Captured(fn, (hidden, cb0_logits, text, *inputs.tensors()), state_restorer(state), self.model.device)
        return self._audio(hidden, cb0_logits, text, *inputs.tensors())
