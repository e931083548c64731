"""What a client of the serving engine holds: a `Request` to submit and the `Handle` it gets
back (stream its audio, take the whole result, cancel it), plus the engine's errors.

A handle and the engine share one `Channel` per request (its updates come out, a cancel goes in),
and a handle asks the engine only what `Driver` names: this module imports no engine.

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
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

from dia2.errors import Dia2Error
from dia2.generation.config import GenerationConfig
from dia2.generation.loop import FrameUpdate, needs_entries
from dia2.generation.prefix import VoicePrefix
from dia2.generation.tts import AudioChunk, GenerationResult, decode_updates, generation_result
from dia2.text.script import ScriptParser
from dia2.text.state_machine import MachineState

if TYPE_CHECKING:
    from dia2.audio.codec import MimiCodec


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


Item = FrameUpdate | BaseException
"""What crosses from the engine to a handle: an update, or the error or cancellation that ends it."""


class Channel:
    """One request between the engine and its `Handle`, the one object both sides hold (the
    engine holds no handle, a handle holds no engine): the request goes in with its number, and
    later a cancel; its updates and its end come out.

    The engine side `deliver`s and reads `cancelled`; the client side `cancel`s and takes what
    was delivered, waiting in a thread (`wait`) or woken on an event loop (`alarm`).
    """

    def __init__(self, request: Request, number: int) -> None:
        self.request, self.number = request, number
        self.submitted = time.perf_counter()
        self.admitted: float | None = None  # perf_counter() when it took a slot
        self.finished = threading.Event()  # set with the last delivery
        self._items: queue.Queue[Item] = queue.Queue()
        self._cancel = threading.Event()
        self._wakers: list[Callable[[], None]] = []  # async readers' alarms, rung at each delivery

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        self._cancel.set()

    def deliver(self, item: Item) -> None:
        """The engine's side: hand over an update, or the error or cancellation that ends it."""
        self._items.put(item)
        if isinstance(item, BaseException) or item.done:
            self.finished.set()
        for wake in list(self._wakers):
            wake()

    def take(self) -> Item | None:
        """The next item delivered, or None when none is waiting."""
        try:
            return self._items.get_nowait()
        except queue.Empty:
            return None

    def wait(self, timeout: float | None) -> Item | None:
        """The next item, waiting for it in this thread up to `timeout` s (None: no limit)."""
        try:
            return self._items.get(timeout=timeout)
        except queue.Empty:
            return None

    @contextmanager
    def alarm(self, wake: Callable[[], None]) -> Iterator[None]:
        """`wake` is called (from the engine thread) at each delivery while this is entered."""
        self._wakers.append(wake)
        try:
            yield
        finally:
            self._wakers.remove(wake)


class Driver(Protocol):
    """What a handle asks of the engine that runs its request (`dia2.serving.engine.Engine`)."""

    @property
    def running(self) -> bool:
        """Whether frames run in the engine's own thread (else reading a handle drives them)."""

    @property
    def codec(self) -> MimiCodec:
        """The codec that decodes the request's codes."""

    def step(self) -> bool:
        """Run one frame; whether any request is left."""

    def withdraw(self, channel: Channel) -> None:
        """Take a cancelled request out: from the queue at once, from a slot at the next frame."""


class Handle:
    """A submitted request. Iterate it for `AudioChunk`s (or `updates()` for the codes), call
    `result()` for the whole utterance, `cancel()` to stop it.

    When the engine runs its own thread (`start()`), reading waits for it; otherwise reading
    drives the engine one frame at a time (so a script can use an engine without a thread).
    """

    def __init__(self, channel: Channel, driver: Driver) -> None:
        self.channel, self._driver = channel, driver

    def __repr__(self) -> str:
        return f"Handle(#{self.number})"

    @property
    def request(self) -> Request:
        return self.channel.request

    @property
    def number(self) -> int:
        return self.channel.number

    @property
    def finished(self) -> threading.Event:
        """Set once the request is done, has failed or was cancelled."""
        return self.channel.finished

    @property
    def submitted(self) -> float:
        return self.channel.submitted

    @property
    def admitted(self) -> float | None:
        """perf_counter() when it took a slot (None while queued)."""
        return self.channel.admitted

    @property
    def cancelled(self) -> bool:
        return self.channel.cancelled

    def cancel(self) -> None:
        """Stop this request: a queued one leaves the queue now, one in a slot frees it at the
        next frame boundary."""
        self.channel.cancel()
        self._driver.withdraw(self.channel)

    async def batches(self) -> AsyncIterator[list[FrameUpdate]]:
        """The updates from an asyncio event loop, in batches of those that arrived together.
        Waiting holds no thread: the engine thread wakes the loop. Raises the request's error
        (after the updates before it); ends when it is done or cancelled. Needs a started engine."""
        if not self._driver.running:
            raise EngineError("reading a handle from an event loop needs a running engine: call Engine.start() first")
        loop, arrived = asyncio.get_running_loop(), asyncio.Event()

        def wake() -> None:
            try:
                loop.call_soon_threadsafe(arrived.set)
            except RuntimeError:  # the loop is closed: nobody reads any more
                pass

        with self.channel.alarm(wake):
            while True:
                arrived.clear()  # before looking: an update delivered after the look rings again
                batch: list[FrameUpdate] = []
                while (item := self.channel.take()) is not None:
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
        while (item := self.channel.take()) is not None:
            if isinstance(item, Cancelled):
                return items
            if isinstance(item, BaseException):
                raise item
            items.append(item)
        return items

    def _next(self, timeout: float | None) -> Item:
        while (item := self.channel.take()) is None:
            if self._driver.running:
                if (item := self.channel.wait(timeout)) is None:
                    raise EngineError(f"request {self.number} gave no audio for {timeout} s")
                return item
            if not self._driver.step():
                if (item := self.channel.take()) is None:
                    raise EngineError(f"request {self.number} is not in the engine (was it submitted to another?)")
                return item
        return item

    def __iter__(self) -> Iterator[AudioChunk]:
        return decode_updates(self.updates(), self._driver.codec)

    def result(self, timeout: float | None = None) -> GenerationResult:
        """The whole utterance, as `Dia2.generate` returns it."""
        frames, words, truncated = [], [], False
        for update in self.updates(timeout):
            frames.append(update.frames)
            words += update.words
            truncated = truncated or update.truncated
        codec = self._driver.codec
        codes = torch.cat(frames, dim=1) if frames else torch.zeros(codec.num_codebooks, 0, dtype=torch.long)
        return generation_result(codes, codec, words, truncated)


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
