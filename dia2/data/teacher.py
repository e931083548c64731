"""The teacher-forced training grid of an utterance (spec section 7).

An utterance becomes exactly the grid inference would build for it, with the very code the
decoder uses: words are aligned by the training rule (`dia2.text.utterance.align_utterance`,
which turns long pauses and the lead-in silence into break entries; voice prefixes follow the
published rule instead, docs/alignment.md), the text streams come from the state machine driven
in forced mode (`forced_text_streams`), and the audio is delayed by `dia2.data.grid`.

Train as we infer: the state machine in its normal, unforced mode (initial_padding 2, max_padding
6), fed a row's action targets as if the model had sampled them, reproduces the row's two text
streams column by column (tests/parity/test_train_infer_text.py). The grid ends where decoding
stops, at column `last_column(end_of_speech_step, max(delay), max_padding)`, and every audio cell
after the bos prefix holds real audio: inference never feeds audio pad (it is banned for
codebook 0), so no row trains on it. `tail_frames` is the audio this needs after the
end-of-speech step; frames past it are not used.

Targets at column t (t = 0..L-2, predicting column t+1):
- action: new_word exactly at the aligned word and break steps and at the end-of-speech step,
  pad elsewhere;
- audio: the codes of column t+1, ignored where that cell is bos (before its delay) or pad, and
  for codebook c >= 1 also where codebook c-1 of that column is: depformer stage c-1 reads that
  cell, and decoding always feeds it a sampled code.

Shapes: C channels (K + 2), K codebooks, N frames, L grid columns, B batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from dia2.data.grid import delay_codes, drop_text, mask_audio_bos
from dia2.errors import Dia2Error
from dia2.model.config import DataConfig
from dia2.text.script import TextTokenIds, Tokenizer
from dia2.text.state_machine import (
    PUBLISHED_MAX_PADDING,
    StateMachine,
    forced_text_streams,
    last_column,
)
from dia2.text.utterance import AlignedUtterance, align_utterance
from dia2.text.words import SpokenWord


def tail_frames(data: DataConfig, max_padding: int = PUBLISHED_MAX_PADDING) -> int:
    """Audio frames a row needs from its end-of-speech step on (that frame included).

    Decoding stops at column E = last_column(end_step, max(delay), max_padding). Codebook c at
    column t holds frame t - delay[c], so the grid's columns up to E hold real audio in every
    codebook when the smallest delay's codebook reaches frame E - min(delay):
    N >= end_step + max(delay) + max_padding - min(delay) + 1 (9 with the published delays).
    """
    delays = data.delays
    return last_column(0, max(delays), max_padding) - min(delays) + 1


class GridError(Dia2Error, ValueError):
    """An utterance that cannot become a training grid; the message says why."""


@dataclass(frozen=True)
class TrainingExample:
    """One utterance as model input and targets.

    tokens [C, L]; action_target [L-1] (action ids); audio_target [K, L-1] with audio_mask
    [K, L-1] (False = ignored). `new_word_steps` holds every new_word action step: the words',
    the breaks', and the end-of-speech step (last).
    """

    tokens: Tensor
    action_target: Tensor
    audio_target: Tensor
    audio_mask: Tensor
    new_word_steps: tuple[int, ...]

    @property
    def columns(self) -> int:
        return self.tokens.shape[-1]


def build_example(
    codes: Tensor,
    words: Sequence[SpokenWord],
    tokenizer: Tokenizer,
    ids: TextTokenIds,
    data: DataConfig,
    prepend_s1_to_first_word: bool = True,
) -> TrainingExample:
    """The grid and targets of an utterance: codes [K, N] and its timed words."""
    try:
        utterance = align_utterance(words, tokenizer, ids, prepend_s1_to_first_word)
    except ValueError as exc:
        raise GridError(str(exc)) from exc
    return example_from_alignment(codes, utterance, ids, data)


def example_from_alignment(codes: Tensor, utterance: AlignedUtterance, ids: TextTokenIds, data: DataConfig) -> TrainingExample:
    """The grid of codes [K, N] and an aligned utterance: L = last_column(end of speech) + 1 columns."""
    K, N = codes.shape
    if K != data.num_codebooks:
        raise GridError(f"codes have {K} codebooks but the model uses {data.num_codebooks}")
    machine = StateMachine.from_config(data, ids)
    eos = utterance.alignment.end_of_speech_step
    tail = tail_frames(data, machine.max_padding)
    if N < eos + tail:
        raise GridError(
            f"utterance has {N} frames but its end-of-speech step is {eos}: keep at least {tail} frames "
            "of audio from that step on (pad the recording with silence before encoding)"
        )
    delays = list(data.delays)
    L = last_column(eos, max(delays), machine.max_padding) + 1
    steps = (*utterance.alignment.action_steps, eos)
    try:
        main, second = forced_text_streams(machine, utterance.entries, steps, L)
    except ValueError as exc:
        raise GridError(f"cannot drive the state machine along this utterance: {exc}") from exc
    used = codes[:, : L - min(delays)].long()  # later frames lie past the column decoding stops at
    audio = delay_codes(used, delays, data.audio_pad_token_id)[:, :L]
    audio = mask_audio_bos(audio, delays, data.audio_bos_token_id)
    tokens = torch.cat([torch.tensor([main, second], dtype=torch.long), audio], dim=0)
    action = torch.full((L - 1,), data.action_pad_token_id, dtype=torch.long)
    action[list(steps)] = data.action_new_word_token_id
    target = audio[:, 1:]
    real = (target != data.audio_bos_token_id) & (target != data.audio_pad_token_id)
    mask = real.clone()
    mask[1:] &= real[:-1]  # depformer stage c-1 is fed codebook c-1 of the same column
    return TrainingExample(tokens, action, target, mask, steps)


@dataclass
class Batch:
    """Padded examples: tokens [B, C, L]; targets/masks over L-1 columns. Padding is masked."""

    tokens: Tensor
    action_target: Tensor
    action_mask: Tensor
    audio_target: Tensor
    audio_mask: Tensor

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(*(t.to(device, non_blocking=True) for t in (self.tokens, self.action_target, self.action_mask, self.audio_target, self.audio_mask)))

    @property
    def frames(self) -> int:
        """Real (unpadded) target columns in the batch."""
        return int(self.action_mask.sum())


def collate(
    examples: Sequence[TrainingExample],
    data: DataConfig,
    ids: TextTokenIds,
    drop_mask: Sequence[bool] | None = None,
) -> Batch:
    """Pad examples to the longest; drop_mask[i] True gives example i the unconditional input."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    B, C, K = len(examples), examples[0].tokens.shape[0], examples[0].audio_target.shape[0]
    L = max(e.columns for e in examples)
    tokens = torch.full((B, C, L), data.audio_pad_token_id, dtype=torch.long)
    tokens[:, 0], tokens[:, 1] = ids.pad, ids.pad
    action = torch.full((B, L - 1), data.action_pad_token_id, dtype=torch.long)
    action_mask = torch.zeros(B, L - 1, dtype=torch.bool)
    audio = torch.full((B, K, L - 1), data.audio_pad_token_id, dtype=torch.long)
    audio_mask = torch.zeros(B, K, L - 1, dtype=torch.bool)
    for i, ex in enumerate(examples):
        n = ex.columns
        tokens[i, :, :n] = drop_text(ex.tokens, ids.zero, ids.pad) if drop_mask is not None and drop_mask[i] else ex.tokens
        action[i, : n - 1] = ex.action_target
        action_mask[i, : n - 1] = True
        audio[i, :, : n - 1] = ex.audio_target
        audio_mask[i, :, : n - 1] = ex.audio_mask
    return Batch(tokens, action, action_mask, audio, audio_mask)
