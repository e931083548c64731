"""What a client of the serving engine holds: a `Request` to submit and the `Handle` it gets
back (stream its audio, take the whole result, cancel it), plus the engine's errors.

A streamed script (an iterable of text pieces) is pumped by its own thread into a buffer that
the engine reads without ever waiting (`StreamedText`), so a slow text source holds up only its
own request.

A handle is read from a thread (iterate it: each read waits in that thread) or from an asyncio
event loop (`async for batch in handle.batches()`: the engine thread wakes the loop when updates
arrive, so a waiting request costs no thread however many wait).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from dia2.errors import Dia2Error
from dia2.generation.config import GenerationConfig
from dia2.generation.loop import FrameUpdate, needs_entries
from dia2.generation.runtime import AudioChunk, GenerationResult, decode_updates
from dia2.generation.prefix import VoicePrefix
from dia2.text.script import ScriptParser
from dia2.text.state_machine import MachineState

if TYPE_CHECKING:
    from dia2.serving.engine import Engine


class EngineError(Dia2Error, RuntimeError):
    """A request the engine cannot take or finish; the message says why and what to do."""


class EngineFull(EngineError):
    """Every slot is busy (and, when queueing, the queue is full)."""


@dataclass(frozen=True)
class Request:
    """One utterance to speak: a whole script, or an iterable of text pieces arriving over time
    (joined as given, as `Dia2.stream` takes them), with its generation settings, an optional
    voice prefix and an optional adapter name (one loaded with `Engine.load_adapter`)."""

    script: str | Iterable[str]
    config: GenerationConfig = field(default_factory=GenerationConfig)
    prefix: VoicePrefix | None = None
    adapter: str | None = None


class Cancelled(Exception):
    """Internal: the request was cancelled; its handle ends quietly."""


class Handle:
    """A submitted request. Iterate it for `AudioChunk`s (or `updates()` for the codes), call
    `result()` for the whole utterance, `cancel()` to stop it.

    When the engine runs its own thread (`start()`), reading waits for it; otherwise reading
    drives the engine one frame at a time (so a script can use an engine without a thread).
    """

    def __init__(self, engine: Engine, request: Request, number: int) -> None:
        self.engine, self.request, self.number = engine, request, number
        self._updates: queue.Queue[FrameUpdate | BaseException] = queue.Queue()
        self._cancel = threading.Event()
        self._wakers: list[Callable[[], None]] = []  # async readers' alarms, rung by the engine thread
        self.finished = threading.Event()
        self.submitted = time.perf_counter()
        self.admitted: float | None = None  # perf_counter() when it took a slot

    def __repr__(self) -> str:
        return f"Handle(#{self.number})"

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Stop this request: a queued one leaves the queue now, one in a slot frees it at the
        next frame boundary."""
        self._cancel.set()
        self.engine._withdraw(self)

    def _deliver(self, item: FrameUpdate | BaseException) -> None:
        """The engine's side: hand over an update, or the error or cancellation that ends it."""
        self._updates.put(item)
        if isinstance(item, BaseException) or item.done:
            self.finished.set()
        for wake in list(self._wakers):
            wake()

    async def batches(self) -> AsyncIterator[list[FrameUpdate]]:
        """The updates from an asyncio event loop, in batches of those that arrived together.
        Waiting holds no thread: the engine thread wakes the loop. Raises the request's error
        (after the updates before it); ends when it is done or cancelled. Needs a started engine."""
        if not self.engine.running:
            raise EngineError("reading a handle from an event loop needs a running engine: call Engine.start() first")
        loop, arrived = asyncio.get_running_loop(), asyncio.Event()

        def wake() -> None:
            try:
                loop.call_soon_threadsafe(arrived.set)
            except RuntimeError:  # the loop is closed: nobody reads any more
                pass

        self._wakers.append(wake)
        try:
            while True:
                arrived.clear()  # before looking: an update delivered after the look rings again
                batch: list[FrameUpdate] = []
                while True:
                    try:
                        item = self._updates.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(item, BaseException):
                        if batch:
                            yield batch
                        if isinstance(item, Cancelled):
                            return
                        raise item
                    batch.append(item)
                    if item.done:
                        yield batch
                        return
                if batch:
                    yield batch
                else:
                    await arrived.wait()
        finally:
            self._wakers.remove(wake)

    def updates(self, timeout: float | None = None) -> Iterator[FrameUpdate]:
        """Frame updates (codes [K, n] on the model's device, words, done) as they come.
        Raises the request's error if it failed; ends early if it was cancelled."""
        while True:
            item = self._next(timeout)
            if isinstance(item, Cancelled):
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.done:
                return

    def poll(self) -> list[FrameUpdate]:
        """The updates that have arrived, without waiting or driving the engine. Raises the
        request's error if it failed."""
        items = []
        while True:
            try:
                item = self._updates.get_nowait()
            except queue.Empty:
                return items
            if isinstance(item, Cancelled):
                return items
            if isinstance(item, BaseException):
                raise item
            items.append(item)

    def _next(self, timeout: float | None) -> FrameUpdate | BaseException:
        while True:
            try:
                return self._updates.get_nowait()
            except queue.Empty:
                pass
            if self.engine.running:
                try:
                    return self._updates.get(timeout=timeout)
                except queue.Empty:
                    raise EngineError(f"request {self.number} gave no audio for {timeout} s") from None
            if not self.engine.step() and self._updates.empty():
                raise EngineError(f"request {self.number} is not in the engine (was it submitted to another?)")

    def __iter__(self) -> Iterator[AudioChunk]:
        return decode_updates(self.updates(), self.engine.tts.codec)

    def result(self, timeout: float | None = None) -> GenerationResult:
        """The whole utterance, as `Dia2.generate` returns it."""
        frames, words, truncated = [], [], False
        for update in self.updates(timeout):
            frames.append(update.frames)
            words += update.words
            truncated = truncated or update.truncated
        codes = torch.cat(frames, dim=1) if frames else torch.zeros(self.engine.num_codebooks, 0, dtype=torch.long)
        tts = self.engine.tts
        return GenerationResult(codes.cpu(), tts._decode(codes), tts.codec.sample_rate, words, truncated)


class StreamedText:
    """A streamed script as the engine reads it: a thread pumps the caller's pieces into a
    buffer, and the engine parses them when its state machine needs entries, never waiting.
    `waiting` says the engine asked for text the caller has not sent yet; `wake` is called when
    more arrives."""

    def __init__(self, pieces: Iterable[str], parser: ScriptParser, wake: Callable[[], None]) -> None:
        self._parser, self._wake = parser, wake
        self._pieces: deque[str] = deque()
        self._ended = False
        self._parsed_all = False
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self.waiting = False
        threading.Thread(target=self._pump, args=(iter(pieces),), daemon=True, name="dia2-text").start()

    def _pump(self, pieces: Iterator[str]) -> None:
        try:
            for piece in pieces:
                self._arrive(piece)
        except BaseException as exc:  # the caller's iterator failed: the request fails with it
            self._error = exc
        finally:
            self._arrive(None)

    def _arrive(self, piece: str | None) -> None:
        with self._lock:
            if piece is None:
                self._ended = True
            else:
                self._pieces.append(piece)
            self.waiting = False
        self._wake()

    def fill(self, state: MachineState, lookahead: int) -> bool:
        while needs_entries(state, lookahead) and not self._parsed_all:
            with self._lock:
                piece = self._pieces.popleft() if self._pieces else None
                ended = self._ended
                self.waiting = piece is None and not ended
            if piece is not None:
                state.append_entries(self._parser.feed(piece))
            elif self._error is not None:
                raise EngineError(f"the streamed script failed: {self._error}") from self._error
            elif ended:
                state.append_entries(self._parser.finish())
                self._parsed_all = True
            else:
                return False
        return True
