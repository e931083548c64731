"""Frame kernels that stand in for the real ones: actions by a fixed policy (so every word's
step follows by hand from the spec), and an eager stand-in for CUDA graph capture."""

from __future__ import annotations

from typing import ClassVar

import torch

from dia2.generation.kernels import FrameKernels

SPEC_MAX_PADDING = 6  # published runtime's max_padding (spec section 5)
ALWAYS, NEVER = "always new_word", "never new_word"


class ForcedActions(FrameKernels):
    """Frame kernels whose action is a fixed policy instead of a sample; counts generated columns.

    The step an action belongs to is the decoder column just run: the decode state's position - 1.
    """

    def __init__(self, base: FrameKernels, policy: str) -> None:
        super().__init__(base.model, base.config)
        self.policy = policy
        self.generated_columns = 0

    def new_state(self, branches, capacity):
        self._state = super().new_state(branches, capacity)
        self.generated_columns = 0
        return self._state

    def action(self, out, seed, step):
        data = self.model.config.data
        wanted = data.action_new_word_token_id if self.policy == ALWAYS else data.action_pad_token_id
        return torch.tensor([wanted], dtype=torch.long, device=out.action_logits.device)

    def audio(self, hidden, cb0_logits, text, state, seed, step):
        self.generated_columns += 1
        return super().audio(hidden, cb0_logits, text, state, seed, step)


def expected_steps(entries, policy: str, initial_padding: int) -> tuple[list[int], int]:
    """New_word steps of the spoken words and end_step, by hand from spec section 5.

    The first word comes after initial_padding forced pads. A word of n tokens (padding n) is
    followed by its n tokens and its forced padding, so the next new_word is n + 1 steps later when
    the model always asks; when it never asks, the machine forces one once max_padding pad steps
    have passed (7 steps after the word), or later if the word is longer. A break of p frames
    holds the next word for max(p, 1) steps (only scripts without breaks use NEVER here).
    """
    step, words = initial_padding, []
    for entry in entries:
        if entry.tokens:
            words.append(step)
            n = len(entry.tokens)
            step += n + 1 if policy == ALWAYS else max(n + 1, SPEC_MAX_PADDING + 1)
        else:
            assert policy == ALWAYS, "the hand rule for breaks is only written for ALWAYS"
            step += max(entry.padding, 1)
    return words, step


class EagerCapture:
    """CPU stand-in for graphs.Captured with a graph's binding: the function is kept with its
    static inputs (and, through its closure, the decode state it was captured on); a replay
    copies the new inputs into the static buffers and writes the results into the static
    outputs of the first run, as a graph replay does."""

    captured: ClassVar[list["EagerCapture"]] = []

    def __init__(self, fn, inputs, restore, device) -> None:
        self.fn, self.static_inputs = fn, tuple(x.clone() for x in inputs)
        self.static_outputs = fn(*self.static_inputs)
        restore()  # the capture run must leave no trace, as warm-up and capture leave none
        EagerCapture.captured.append(self)

    def __call__(self, *inputs):
        for static, value in zip(self.static_inputs, inputs):
            static.copy_(value)
        for static, value in zip(_as_tuple(self.static_outputs), _as_tuple(self.fn(*self.static_inputs))):
            static.copy_(value)
        return self.static_outputs


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)
