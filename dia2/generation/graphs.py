"""CUDA graphs and torch.compile for the frame kernels, wrapped from outside the model.

The frame kernels (`dia2.generation.kernels`: `FrameKernels` for one utterance, `BatchKernels`
for a serving batch) expose a frame's tensor work as two pure functions: `head` (decoder step +
action sampling) and `audio` (cb0 + every depformer stage, with their sampling). Here each is
captured whole into one CUDA graph, so a frame costs two graph launches and one small host sync
(the sampled action, which the state machine needs) instead of hundreds of kernel launches.
Nothing in the model is patched.

A graph is bound to what it was captured with: its input/output buffers and the decode state.
Random draws need no RNG state (they are keyed by the seed and step input tensors,
`dia2.generation.sampling`). So `CudaGraphKernels` keeps, per shape (branches, capacity), one
decode state and the two graphs captured on it, and hands that state out again, reset in
place, for the next utterance of that shape: a kernels object that is kept (as `Dia2` keeps it)
captures once per shape, not once per utterance. Warm-up, capture and replay run on the model's
device (its streams and graph memory pool), so `cuda:1` works like `cuda:0`.

`GraphedBatchKernels` captures the serving engine's two functions at the engine's full size:
every cache row and every slot, those not in use computed and ignored (the "masked" slots), so a
frame costs two graph launches however many requests share it. A graph is bound to the engine's
buffers and caches, which never move; it is captured again when the adapters' hooks change.

8-bit layers with LLM.int8()'s outlier threshold cannot be captured (their outlier search syncs
with the host): `check_capturable` refuses them; `quantize(..., int8_threshold=0.0)` builds
capturable ones.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from dia2.errors import Dia2Error
from dia2.generation.kernels import BatchKernels, FrameInputs, FrameKernels
from dia2.model.network import DecoderOutput, DecodeState, Dia2Model
from dia2.model.quant import int8_outlier_threshold

logger = logging.getLogger(__name__)

_WARMUP = 2
# Decode states (each with its two graphs) one CudaGraphKernels keeps: each holds a KV cache of
# the full capacity (hundreds of MB for the 2B with CFG), so only the shapes in recent use stay.
MAX_SHAPES = 2

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class GraphError(Dia2Error, ValueError):
    """A model or call that CUDA graphs cannot capture or replay."""


def lru_get(cache: OrderedDict[K, V], key: K, build: Callable[[], V], limit: int) -> V:
    """cache[key], built on a miss; beyond `limit` entries the least recently used is dropped."""
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    while len(cache) >= limit:
        cache.popitem(last=False)
    cache[key] = value = build()
    return value


def check_capturable(model: Dia2Model) -> None:
    """Refuse a model whose frame work cannot be captured into a CUDA graph."""
    threshold = int8_outlier_threshold(model)
    if threshold > 0:
        raise GraphError(
            f"8-bit layers with the LLM.int8() outlier threshold {threshold} cannot run in CUDA graphs "
            "(their outlier search syncs with the host): use --low-vram 4bit or drop --cuda-graph "
            "(Python API: quantize(model, '8bit', int8_threshold=0.0) builds capturable 8-bit layers)"
        )
    if model.device.type != "cuda":
        raise GraphError(f"CUDA graphs need the model on a CUDA device, not {model.device}; drop --cuda-graph")


def state_restorer(state: DecodeState) -> Callable[[], None]:
    """Undo what warm-up and capture do to a decode state's positions, so results match eager."""
    position, filled = state.position.clone(), state.filled

    def restore() -> None:
        state.position.copy_(position)
        state.filled = filled

    return restore


class Captured:
    """One function captured into a CUDA graph on `device`, with static input and output buffers."""

    def __init__(
        self,
        fn: Callable[..., tuple[Tensor, ...] | Tensor],
        inputs: tuple[Tensor, ...],
        restore: Callable[[], None],
        device: torch.device,
    ) -> None:
        self.device = device
        self.static_inputs = tuple(x.clone() for x in inputs)
        # Every call names the device: without it torch uses the current device's stream, and a
        # model on cuda:1 would be captured on cuda:0's (an empty graph).
        with torch.cuda.device(device):
            stream = torch.cuda.Stream(device=device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                for _ in range(_WARMUP):  # lets lazy init (cuBLAS handles, allocator) happen outside capture
                    fn(*self.static_inputs)
                    # Each run writes the column the state is at, never one past it: the state may
                    # have room for just one more column.
                    restore()
            torch.cuda.current_stream(device).wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            # torch.cuda.graph's default capture stream is made once, on whichever device is
            # current then: capture on this device's own stream instead.
            # thread_local: other threads (audio decoding for clients, voice uploads) may use the
            # GPU during a capture; in the default global mode their calls would break it.
            with torch.cuda.graph(self.graph, stream=stream, capture_error_mode="thread_local"):
                self.static_outputs = fn(*self.static_inputs)
            restore()

    def __call__(self, *inputs: Tensor):
        with torch.cuda.device(self.device):
            for static, value in zip(self.static_inputs, inputs):
                if static.data_ptr() != value.data_ptr():
                    static.copy_(value)
            self.graph.replay()
        return self.static_outputs


@dataclass
class _Shape:
    """The decode state of one (branches, capacity) and the graphs captured on it."""

    state: DecodeState
    head: Captured | None = None
    audio: Captured | None = None


class CudaGraphKernels(FrameKernels):
    """FrameKernels whose per-frame work replays CUDA graphs (CUDA only), captured once per shape.

    Keep one instance for many utterances, one at a time: `new_state` hands out the shape's decode
    state reset in place, and the graphs captured on it replay. At most `max_shapes` shapes are
    kept; the least recently used one goes with its graphs.
    """

    def __init__(self, inner: FrameKernels, max_shapes: int = MAX_SHAPES) -> None:
        check_capturable(inner.model)
        super().__init__(inner.model, inner.config)
        self.inner = inner
        self.max_shapes = max_shapes
        self._shapes: OrderedDict[tuple[int, int], _Shape] = OrderedDict()

    def new_state(self, branches: int, capacity: int) -> DecodeState:
        def build() -> _Shape:
            logger.info("new decode state for CUDA graphs: %d branches x %d columns on %s", branches, capacity, self.model.device)
            return _Shape(self.model.new_state(branches, capacity))

        state = lru_get(self._shapes, (branches, capacity), build, self.max_shapes).state
        state.reset()
        return state

    def _shape(self, state: DecodeState) -> _Shape:
        for shape in self._shapes.values():
            if shape.state is state:
                return shape
        raise GraphError("CudaGraphKernels replays graphs bound to its own decode states: take the state from its new_state()")

    def head(self, column: Tensor, state: DecodeState, seed: Tensor, step: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        shape = self._shape(state)
        if shape.head is None:
            fn = lambda col, sd, st: self.inner.head(col, state, sd, st)
            shape.head = Captured(fn, (column, seed, step), state_restorer(state), self.model.device)
        return shape.head(column, seed, step)

    def audio(self, hidden: Tensor, cb0_logits: Tensor, text: Tensor, state: DecodeState, seed: Tensor, step: Tensor) -> Tensor:
        shape = self._shape(state)
        if shape.audio is None:
            fn = lambda h, c, t, sd, st: self.inner.audio(h, c, t, state, sd, st)
            inputs = (hidden, cb0_logits, text, seed, step)
            shape.audio = Captured(fn, inputs, state_restorer(state), self.model.device)
        return shape.audio(hidden, cb0_logits, text, seed, step)

    def action(self, out: DecoderOutput, seed: Tensor, step: Tensor) -> Tensor:
        return self.inner.action(out, seed, step)


class CompiledKernels(FrameKernels):
    """FrameKernels whose two functions go through torch.compile (any device)."""

    def __init__(self, inner: FrameKernels, mode: str | None = None) -> None:
        super().__init__(inner.model, inner.config)
        self._head = torch.compile(FrameKernels.head, mode=mode, dynamic=False)
        self._audio = torch.compile(FrameKernels.audio, mode=mode, dynamic=False)

    def head(self, column: Tensor, state: DecodeState, seed: Tensor, step: Tensor):
        return self._head(self, column, state, seed, step)

    def audio(self, hidden: Tensor, cb0_logits: Tensor, text: Tensor, state: DecodeState, seed: Tensor, step: Tensor) -> Tensor:
        return self._audio(self, hidden, cb0_logits, text, state, seed, step)


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


MIN_BATCH = 2
"""Fewest rows and utterances a compiled batched call runs (the executor pads up to it): a
dimension of size 1 would be specialised, and the next request to join would recompile."""


class CompiledBatchKernels(BatchKernels):
    """BatchKernels through torch.compile (any device), one compiled graph for every batch.

    A serving batch changes shape whenever a request joins or leaves. Every dimension that moves
    is marked dynamic within its bounds: cache rows R in [MIN_BATCH, rows], utterances J in
    [MIN_BATCH, slots] (the executor pads both up to MIN_BATCH) and the filled cache length S in
    [MIN_BATCH, length] (the decoder attends over the filled columns only, as eager does). So
    once compiled, requests join and leave without a recompile. The sampling width is a host
    number in the graph: the executor rounds it up to a power of two (`sampling_width`), so
    other top-k settings compile once per bucket.

    While the adapter bank holds adapters, frames run eager: torch.compile does not guard on
    module hooks, so the LoRA hooks would be left out of (or stay in) a graph compiled before
    they changed.
    """

    def __init__(self, model: Dia2Model, rows: int, slots: int, length: int, backend: str = "inductor") -> None:
        super().__init__(model)
        self.bounds = {"rows": rows, "slots": slots, "length": length}
        # The model's work alone: a graph that read the adapter bank would be guarded on it and
        # recompile (minutes on a CPU) once an adapter had come and gone.
        self._head = torch.compile(BatchKernels.model_head, backend=backend, dynamic=None)
        self._audio = torch.compile(BatchKernels.model_audio, backend=backend, dynamic=None)
        self._told_eager = False

    def _eager(self) -> bool:
        if self.bank is None or not self.bank.names:
            return False
        if not self._told_eager:
            logger.info("LoRA adapters are loaded: the engine's frames run eager (not compiled) until they are unloaded")
            self._told_eager = True
        return True

    def head(self, columns: Tensor, state: DecodeState, inputs: FrameInputs) -> tuple[Tensor, Tensor, Tensor]:
        if self._eager():
            return super().head(columns, state, inputs)
        # The filled columns only (as an eager step narrows them): a dynamic length, not the capacity.
        end = state.filled + columns.shape[-1]
        state = DecodeState([cache.narrow(end) for cache in state.decoder], state.depformer, state.position, state.filled)
        self._mark_rows(columns, state.position, inputs.rows.owner, inputs.adapters)
        for cache in state.decoder:
            self._mark_rows(cache.k, cache.v)
            for t in (cache.k, cache.v):
                self._mark(t, 2, self.bounds["length"])
        self._mark_slots(inputs)
        return self._head(self, columns, state, inputs)

    def audio(self, hidden: Tensor, cb0_logits: Tensor, text: Tensor, state: DecodeState, inputs: FrameInputs) -> Tensor:
        if self._eager():
            return super().audio(hidden, cb0_logits, text, state, inputs)
        self._mark_rows(hidden, cb0_logits, text, inputs.rows.owner, inputs.adapters)
        for cache in state.depformer:
            self._mark_rows(cache.k, cache.v)
        self._mark_slots(inputs)
        return self._audio(self, hidden, cb0_logits, text, state, inputs)

    def _mark_rows(self, *tensors: Tensor) -> None:
        for t in tensors:
            self._mark(t, 0, self.bounds["rows"])

    def _mark_slots(self, inputs: FrameInputs) -> None:
        r = inputs.rows
        for t in (r.cond, r.uncond, inputs.seed, inputs.step, *inputs.text.tensors(), *inputs.audio.tensors()):
            self._mark(t, 0, self.bounds["slots"])

    @staticmethod
    def _mark(t: Tensor, dim: int, bound: int) -> None:
        if bound > MIN_BATCH:
            torch._dynamo.mark_dynamic(t, dim, min=MIN_BATCH, max=bound)


def sampling_width(width: int, vocab: int) -> int:
    """A sampling width rounded up to a power of two (at most the vocabulary): the compiled
    engine's graphs take it as a constant, so its few values each compile once."""
    return min(1 << max(width - 1, 0).bit_length(), max(vocab, width))
