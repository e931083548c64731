"""The tensor work of one frame, for one utterance and for a serving batch, side by side.

A frame is two pure functions of explicit tensor inputs, the units that CUDA graphs and
torch.compile wrap from outside (`dia2.generation.graphs`):
- `head` runs the decoder on each row's column t and draws each utterance's action of column t+1;
- `audio` draws codebook 0 and then every depformer stage of each utterance's column t+1.
Between the two, the host runs the state machine (it needs the action) and writes the text of
column t+1 (`dia2.generation.loop.Utterance`).

Both families draw through the same functions (`dia2.generation.sampling.sample_action`,
`sample_audio` here), so a change to one is a change to the other:
- `FrameKernels`: one utterance (`FrameLoop`, `Dia2.generate`), its 1 or 2 rows (CFG) and its
  sampling settings fixed at construction; `seed` and `step` [1] are inputs;
- `BatchKernels`: a serving batch (`dia2.serving.engine`), J utterances over R cache rows, each
  row through its own adapter; everything per utterance is an input (`FrameInputs`).
Draws are keyed by seed and step, so the kernels hold no random state, and an utterance drawn
beside others (or beside rows not in use) draws what it draws alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from dia2.generation.config import GenerationConfig
from dia2.generation.sampling import RowSampling, TensorFields, draw_keyed, sample_action, stream_keys
from dia2.model.network import DecoderOutput, DecodeState, Dia2Model

if TYPE_CHECKING:
    from dia2.model.lora_bank import LoraBank


@dataclass(frozen=True)
class Rows(TensorFields):
    """Which batch rows make which of J utterances: `cond` [J] the row of each utterance's
    conditional branch, `uncond` [J] its unconditional row (its conditional one without CFG),
    `owner` [R] the utterance of each row. Long tensors on the model's device."""

    cond: Tensor
    uncond: Tensor
    owner: Tensor

    @classmethod
    def of(cls, branches: Sequence[int], device: torch.device | str) -> Rows:
        """Utterances in row order, each with 1 or 2 rows (conditional first)."""
        cond, uncond, owner, row = [], [], [], 0
        for j, n in enumerate(branches):
            cond.append(row)
            uncond.append(row + n - 1)
            owner += [j] * n
            row += n
        as_tensor = lambda v: torch.tensor(v, dtype=torch.long, device=device)
        return cls(as_tensor(cond), as_tensor(uncond), as_tensor(owner))


def sample_audio(
    model: Dia2Model,
    hidden: Tensor,
    cb0_logits: Tensor,
    text: Tensor,
    state: DecodeState,
    rows: Rows,
    params: RowSampling,
    seed: Tensor,
    step: Tensor,
    banned_cb0: Tensor,
) -> Tensor:
    """Codebooks 0..K-1 of the next column of J utterances, from the rows' decoder hidden [R, D]
    and cb0 logits [R, V] of the current column and the rows' text [R, 2] of the next one.
    seed/step [J] key the draws. Returns codes [J, K] long."""
    keys = stream_keys(seed, step, range(1, 1 + model.config.num_codebooks))  # draw 1 + k: codebook k
    codes = [draw_keyed(cb0_logits[rows.cond], cb0_logits[rows.uncond], params, keys[:, 0], banned_cb0)]
    inputs = model.depformer_inputs(hidden)  # once a frame, not at each stage
    for stage in range(model.config.num_depformer_stages):
        logits = model.depformer_step(stage, inputs, codes[-1][rows.owner], state, text=text)
        codes.append(draw_keyed(logits[rows.cond], logits[rows.uncond], params, keys[:, 1 + stage]))
    return torch.stack(codes, dim=1)


def banned_cb0(model: Dia2Model) -> Tensor:
    """The codebook-0 ids never drawn (bos and pad), on the model's device."""
    data = model.config.data
    return torch.tensor([data.audio_bos_token_id, data.audio_pad_token_id], device=model.device)


class FrameKernels:
    """The tensor work of one frame of one utterance; pure functions of their tensor inputs.

    `head` runs the decoder on column t and samples the action of column t+1; `audio` samples
    codebook 0 and then every depformer stage of column t+1. `seed` and `step` ([1] long: the
    utterance's seed and the frame being drawn) key the draws, so one kernels object serves any
    number of utterances of its config.
    """

    def __init__(self, model: Dia2Model, config: GenerationConfig) -> None:
        self.model = model
        self.config = config
        device = model.device
        self.banned_cb0 = banned_cb0(model)
        self.rows = Rows.of([config.branches], device)
        action_vocab = model.config.data.action_vocab_size
        self.text = RowSampling.of([(config.text, config.cfg_scale, config.cfg_filter_k)], action_vocab, device)
        vocab = model.config.depformer_logit_size
        self.audio_params = RowSampling.of([(config.audio, config.cfg_scale, config.cfg_filter_k)], vocab, device)

    def new_state(self, branches: int, capacity: int) -> DecodeState:
        """Decode state for one utterance (a graph wrapper hands out its captured one)."""
        return self.model.new_state(branches, capacity)

    def action(self, out: DecoderOutput, seed: Tensor, step: Tensor) -> Tensor:
        """Action of the next column from the last column of a decoder output; [1] long."""
        r = self.rows
        return sample_action(out.action_logits[:, -1], r.cond, r.uncond, self.text, seed, step)

    def head(self, column: Tensor, state: DecodeState, seed: Tensor, step: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """column [branches, C, 1] -> (action [1], hidden [branches, D], cb0_logits [branches, V])."""
        out = self.model.step(column, state)
        return self.action(out, seed, step), out.hidden[:, -1], out.cb0_logits[:, -1]

    def audio(self, hidden: Tensor, cb0_logits: Tensor, text: Tensor, state: DecodeState, seed: Tensor, step: Tensor) -> Tensor:
        """Codebooks 0..K-1 of the next column: hidden/cb0_logits of the current column,
        text [branches, 2] of the next column. Returns codes [K] long."""
        codes = sample_audio(self.model, hidden, cb0_logits, text, state, self.rows, self.audio_params, seed, step, self.banned_cb0)
        return codes[0]


@dataclass(frozen=True)
class FrameInputs:
    """What one batched frame needs besides the model inputs: J utterances over R rows."""

    rows: Rows
    adapters: Tensor  # [R] long: each row's adapter in the bank (0: none)
    seed: Tensor  # [J] long
    step: Tensor  # [J] long: the frame each utterance draws for
    text: RowSampling  # [J]: how each draws its action
    audio: RowSampling  # [J]: how each draws its codes

    def tensors(self) -> tuple[Tensor, ...]:
        """Every tensor, flat (a graph's static inputs)."""
        return (*self.rows.tensors(), self.adapters, self.seed, self.step, *self.text.tensors(), *self.audio.tensors())

    def like(self, tensors: Sequence[Tensor]) -> FrameInputs:
        """These inputs with their tensors replaced (in `tensors()` order): each part takes as
        many as it has fields, so a tensor added to `Rows` or `RowSampling` follows."""
        rows, text = len(self.rows.tensors()), len(self.text.tensors())
        adapters, seed, step = tensors[rows : rows + 3]
        rest = tensors[rows + 3 :]
        return FrameInputs(
            self.rows.like(tensors[:rows]), adapters, seed, step, self.text.like(rest[:text]), self.audio.like(rest[text:])
        )


class BatchKernels:
    """A frame's tensor work for a serving batch (eager); `GraphedBatchKernels`
    (`dia2.generation.graphs`) replays it from CUDA graphs."""

    def __init__(self, model: Dia2Model) -> None:
        self.model = model
        self.banned_cb0 = banned_cb0(model)
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
            return self.model_head(columns, state, inputs)

    def audio(self, hidden: Tensor, cb0_logits: Tensor, text: Tensor, state: DecodeState, inputs: FrameInputs) -> Tensor:
        """Codes [J, K] of each utterance's next column from the rows' hidden [R, D], cb0 logits
        [R, V] and next-column text [R, 2]."""
        with self.routed(inputs.adapters):
            return self.model_audio(hidden, cb0_logits, text, state, inputs)

    # The work itself, through the model's modules as they are (routing rows to adapters is the
    # caller's): what a compiled engine compiles, so that its graphs never read the adapter bank.

    def model_head(self, columns: Tensor, state: DecodeState, inputs: FrameInputs) -> tuple[Tensor, Tensor, Tensor]:
        out = self.model.step(columns, state)
        r = inputs.rows
        action = sample_action(out.action_logits[:, -1], r.cond, r.uncond, inputs.text, inputs.seed, inputs.step)
        return action, out.hidden[:, -1], out.cb0_logits[:, -1]

    def model_audio(self, hidden: Tensor, cb0_logits: Tensor, text: Tensor, state: DecodeState, inputs: FrameInputs) -> Tensor:
        return sample_audio(
            self.model, hidden, cb0_logits, text, state, inputs.rows, inputs.audio, inputs.seed, inputs.step,
            self.banned_cb0,
        )
