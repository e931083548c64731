"""CUDA graphs and torch.compile for the generation loop, wrapped from outside the model.

`FrameKernels` (dia2.generation.loop) exposes a frame's tensor work as two pure functions:
`head` (decoder step + action sampling) and `audio` (cb0 + every depformer stage, with their
sampling). Here each is captured whole into one CUDA graph, so a frame costs two graph launches
and one small host sync (the sampled action, which the state machine needs) instead of
hundreds of kernel launches. Nothing in the model is patched.

Graphs are tied to their input/output buffers and to the decode state they were captured with,
so `CudaGraphKernels` owns one persistent state per (branches, capacity) and hands it out
(reset) for every utterance: capture happens once per shape, not once per call.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import Tensor

from dia2.generation.loop import FrameKernels
from dia2.model.network import DecoderOutput, DecodeState

logger = logging.getLogger(__name__)

_WARMUP = 2


class _Captured:
    """One function captured into a CUDA graph with static input and output buffers."""

    def __init__(self, fn: Callable[..., tuple[Tensor, ...] | Tensor], inputs: tuple[Tensor, ...], restore: Callable[[], None], generator):
        self.static_inputs = tuple(x.clone() for x in inputs)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(_WARMUP):  # lets lazy init (cuBLAS handles, allocator) happen outside capture
                fn(*self.static_inputs)
        torch.cuda.current_stream().wait_stream(stream)
        restore()
        self.graph = torch.cuda.CUDAGraph()
        if generator is not None:
            if not hasattr(self.graph, "register_generator_state"):
                raise RuntimeError("this torch build cannot capture a seeded generator in a CUDA graph: upgrade torch or drop the seed")
            # A seeded generator's RNG offsets must advance on every replay, as in eager mode.
            self.graph.register_generator_state(generator)
        with torch.cuda.graph(self.graph):
            self.static_outputs = fn(*self.static_inputs)
        restore()

    def __call__(self, *inputs: Tensor):
        for static, value in zip(self.static_inputs, inputs):
            if static.data_ptr() != value.data_ptr():
                static.copy_(value)
        self.graph.replay()
        return self.static_outputs


class CudaGraphKernels(FrameKernels):
    """FrameKernels whose per-frame work replays CUDA graphs (CUDA only)."""

    def __init__(self, inner: FrameKernels) -> None:
        if inner.model.device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device; drop --cuda-graph on CPU")
        super().__init__(inner.model, inner.config, inner.generator)
        self.inner = inner
        self._states: dict[tuple[int, int], DecodeState] = {}
        self._head: dict[int, _Captured] = {}
        self._audio: dict[int, _Captured] = {}

    def new_state(self, branches: int, capacity: int) -> DecodeState:
        key = (branches, capacity)
        if key not in self._states:
            self._states[key] = self.model.new_state(branches, capacity)
        state = self._states[key]
        state.reset()
        return state

    def _snapshot(self, state: DecodeState) -> Callable[[], None]:
        """Undo what warm-up and capture do to the state and the RNG, so results match eager."""
        position = state.position.clone()
        rng = self.generator.get_state() if self.generator is not None else torch.cuda.get_rng_state()

        def restore() -> None:
            state.position.copy_(position)
            if self.generator is not None:
                self.generator.set_state(rng)
            else:
                torch.cuda.set_rng_state(rng)

        return restore

    def head(self, column: Tensor, state: DecodeState) -> tuple[Tensor, Tensor, Tensor]:
        key = id(state)
        if key not in self._head:
            fn = lambda col: self.inner.head(col, state)  # noqa: E731
            self._head[key] = _Captured(fn, (column,), self._snapshot(state), self.generator)
        return self._head[key](column)

    def audio(self, hidden: Tensor, cb0_logits: Tensor, text: Tensor, state: DecodeState) -> Tensor:
        key = id(state)
        if key not in self._audio:
            fn = lambda h, c, t: self.inner.audio(h, c, t, state)  # noqa: E731
            self._audio[key] = _Captured(fn, (hidden, cb0_logits, text), self._snapshot(state), self.generator)
        return self._audio[key](hidden, cb0_logits, text)

    def action(self, out: DecoderOutput) -> Tensor:
        return self.inner.action(out)


class CompiledKernels(FrameKernels):
    """FrameKernels whose two functions go through torch.compile (any device)."""

    def __init__(self, inner: FrameKernels, mode: str | None = None) -> None:
        super().__init__(inner.model, inner.config, inner.generator)
        self._head = torch.compile(FrameKernels.head, mode=mode, dynamic=False)
        self._audio = torch.compile(FrameKernels.audio, mode=mode, dynamic=False)

    def head(self, column: Tensor, state: DecodeState):
        return self._head(self, column, state)

    def audio(self, hidden: Tensor, cb0_logits: Tensor, text: Tensor, state: DecodeState) -> Tensor:
        return self._audio(self, hidden, cb0_logits, text, state)


def kernel_wrapper(cuda_graph: bool = False, compile: bool = False) -> Callable[[FrameKernels], FrameKernels] | None:
    """The wrapper the CLI/API flags ask for (compile first, then graphs), or None for eager."""
    if not (cuda_graph or compile):
        return None

    def wrap(kernels: FrameKernels) -> FrameKernels:
        if compile:
            kernels = CompiledKernels(kernels)
        if cuda_graph:
            kernels = CudaGraphKernels(kernels)
        return kernels

    return wrap
