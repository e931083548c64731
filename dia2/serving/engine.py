"""The serving engine: many utterances in one batched frame loop, each with its own voice,
adapter and seed.

Decoding is bound by weight bandwidth: a frame reads every weight once whether it serves one
utterance or sixteen, so the engine runs all of them in one batched step. It has a fixed number
of slots; `submit` queues a request and returns a `Handle` that streams `AudioChunk`s and can be
cancelled.

How a frame goes (`Engine.step`), at each frame boundary:
1. cancelled requests leave (their rows are freed at once), queued ones take free slots;
2. a request whose text is ready is prefilled alone into fresh cache rows (its prefix, or the
   lone bos column) and samples its first action;
3. every utterance that can take its next step (a streamed script may be waiting for text)
   advances its state machine; their audio (codebook 0, then every depformer stage) is sampled
   in one batched depformer pass;
4. those not finished run the decoder on their new column in one batched step over all cache
   rows, each row at its own position.

Each utterance is an `Utterance` (the host side `Dia2.generate` drives too), with its own
generator drawn in the same order as alone, its own CFG (a second cache row only when it
guides) and its own LoRA adapter (`dia2.model.lora_bank`, per row, never merged). So its tokens
are those `Dia2.generate`/`stream` give for it alone with the same seed, whatever shares the
batch and whenever it joined, up to the float rounding of a batched matmul (a token flips only
where two choices tie to ~1e-6).

Cache rows are kept dense: rows 0..R-1 are in use, and a leaving request's rows are filled by
moving the last rows into them, so every batched step is one slice of the caches (no gather).
"""

from __future__ import annotations

import itertools
import logging
import queue
import secrets
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from dia2.errors import Dia2Error
from dia2.generation.long_form import LongForm
from dia2.generation.loop import FrameUpdate, GenerationConfig, Utterance, needs_entries
from dia2.generation.runtime import AudioChunk, Dia2, GenerationResult, decode_updates
from dia2.generation.sampling import guided_sample
from dia2.generation.voice import Voice
from dia2.text.script import ScriptParser
from dia2.text.state_machine import MachineState

if TYPE_CHECKING:
    from dia2.model.lora_bank import LoraBank

logger = logging.getLogger(__name__)


class EngineError(Dia2Error, RuntimeError):
    """A request the engine cannot take or finish; the message says why and what to do."""


class EngineFull(EngineError):
    """Every slot is busy (and, when queueing, the queue is full)."""


@dataclass(frozen=True)
class EngineConfig:
    """How an engine is sized. Caches are allocated once, at construction."""

    slots: int = 4
    """Utterances generated at once. Each holds up to two cache rows (two with CFG)."""
    max_queued: int = 64
    """Requests that may wait for a slot; beyond this `submit` refuses with EngineFull."""
    max_prefix_frames: int = 250
    """Longest voice prefix a slot holds, in frames (250 = 20 s), on top of the model's context."""
    max_adapters: int = 8
    """LoRA adapters loaded at once."""
    max_adapter_rank: int = 64
    """Highest LoRA rank a loaded adapter may have (the bank's storage is sized for it)."""

    def __post_init__(self) -> None:
        for name in ("slots", "max_adapters", "max_adapter_rank"):
            if getattr(self, name) < 1:
                raise EngineError(f"EngineConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queued < 0 or self.max_prefix_frames < 0:
            raise EngineError("EngineConfig.max_queued and max_prefix_frames must be >= 0")


@dataclass(frozen=True)
class Request:
    """One utterance to speak: a whole script, or an iterable of text pieces arriving over time
    (joined as given, as `Dia2.stream` takes them), with its generation settings, an optional
    voice prefix and an optional adapter name (one loaded with `Engine.load_adapter`)."""

    script: str | Iterable[str]
    config: GenerationConfig = field(default_factory=GenerationConfig)
    voice: Voice | None = None
    adapter: str | None = None


class _Cancelled(Exception):
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
        self.finished = threading.Event()

    def __repr__(self) -> str:
        return f"Handle(#{self.number})"

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Stop this request; its slot (or queue place) is freed at the next frame boundary."""
        self._cancel.set()
        self.engine._wake()

    def updates(self, timeout: float | None = None) -> Iterator[FrameUpdate]:
        """Frame updates (codes [K, n] on the model's device, words, done) as they come.
        Raises the request's error if it failed; ends early if it was cancelled."""
        while True:
            item = self._next(timeout)
            if isinstance(item, _Cancelled):
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.done:
                return

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


class _StreamedText:
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


class _Job:
    """A request in the engine: its handle, generator, adapter and, once admitted, its
    utterance, cache rows and the model outputs its next step samples from."""

    def __init__(self, handle: Handle, generator: torch.Generator, adapter: int) -> None:
        self.handle, self.generator, self.adapter = handle, generator, adapter
        self.request = handle.request
        self.utterance: Utterance | None = None
        self.speech: LongForm | None = None  # a whole script, spoken part after part
        self.prefilled = False
        self.rows: list[int] = []
        self.pending: tuple[Tensor, Tensor, Tensor] | None = None  # action, hidden, cb0 logits
        self.text: Tensor | None = None  # text [branches, 2] of the column being sampled

    @property
    def waiting(self) -> bool:
        """Whether it cannot go on until more of its streamed script arrives."""
        feed = self.utterance.feed if self.utterance is not None else None
        return isinstance(feed, _StreamedText) and feed.waiting

    @property
    def config(self) -> GenerationConfig:
        assert self.utterance is not None
        return self.utterance.config

    def emit(self, item: FrameUpdate | BaseException) -> None:
        if isinstance(item, FrameUpdate) and self.speech is not None:
            item = self.speech.record(item)
        self.handle._updates.put(item)
        if isinstance(item, BaseException) or item.done:
            self.handle.finished.set()


class Engine:
    """A fixed number of slots generating at once on one `Dia2` runtime's model.

        engine = Engine(Dia2.from_repo("nari-labs/Dia2-2B"), EngineConfig(slots=16)).start()
        handle = engine.submit(Request("[S1] Hello there.", GenerationConfig(seed=1)))
        for chunk in handle: ...

    Without `start()` the engine runs in the thread that reads a handle (or calls `step()`).
    The engine owns its model while it runs: do not call the runtime's own generate/stream on
    the same model meanwhile.
    """

    def __init__(self, tts: Dia2, config: EngineConfig | None = None) -> None:
        self.tts, self.model = tts, tts.model
        self.config = config = config or EngineConfig()
        self.num_codebooks = self.model.config.num_codebooks
        context = self.model.config.runtime.max_context_steps
        self.length = context + max(1, config.max_prefix_frames)
        max_rows = 2 * config.slots
        self.state = self.model.new_state(max_rows, self.length)
        self.state.position = torch.zeros(max_rows, dtype=torch.long, device=self.model.device)
        data = self.model.config.data
        self.banned_cb0 = torch.tensor([data.audio_bos_token_id, data.audio_pad_token_id], device=self.model.device)
        self.bank: LoraBank | None = None
        self._owners: list[_Job] = []  # cache row -> its job; rows 0..len-1 are in use
        self._jobs: list[_Job] = []  # jobs holding a slot
        self._queue: deque[_Job] = deque()
        self._numbers = itertools.count(1)
        self._lock = threading.Condition()  # guards the queue and wakes the engine thread
        self._step_lock = threading.Lock()  # one frame at a time; adapters change between frames
        self._thread: threading.Thread | None = None
        self._stopping = False

    # --- requests ------------------------------------------------------------------------------

    def submit(self, request: Request, *, wait: bool = True) -> Handle:
        """Queue a request; returns its handle at once.

        wait=True: the request waits for a free slot (EngineFull once `max_queued` are waiting);
        wait=False: EngineFull unless a slot is free now. An adapter name not loaded is refused here.
        """
        if not isinstance(request, Request):
            raise TypeError(f"submit takes a Request, got {type(request).__name__}")
        adapter = self._adapter_index(request.adapter)
        seed = request.config.seed if request.config.seed is not None else secrets.randbits(63)
        generator = torch.Generator(device=self.model.device).manual_seed(seed)
        with self._lock:
            # Queued requests first fill the free slots; those beyond wait for one.
            waiting = len(self._jobs) + len(self._queue) - self.config.slots
            if not wait and waiting >= 0:
                raise EngineFull(
                    f"all {self.config.slots} slots are busy: retry later, submit with wait=True to queue, "
                    "or run an engine with more slots (EngineConfig.slots)"
                )
            if waiting >= self.config.max_queued:
                raise EngineFull(
                    f"all {self.config.slots} slots are busy and {waiting} requests are queued "
                    f"(EngineConfig.max_queued = {self.config.max_queued}): retry later"
                )
            job = _Job(Handle(self, request, next(self._numbers)), generator, adapter)
            self._queue.append(job)
            self._lock.notify_all()
        return job.handle

    @property
    def busy_slots(self) -> int:
        """Slots holding a request (being prefilled or generating)."""
        return len(self._jobs)

    @property
    def queued(self) -> int:
        """Requests not yet in a slot."""
        return len(self._queue)

    # --- adapters ------------------------------------------------------------------------------

    def load_adapter(self, name: str, adapter: str, revision: str | None = None) -> None:
        """Load a PEFT LoRA adapter (folder or Hub repo id) under `name`, between two frames;
        requests name it in `Request.adapter`. An adapter for another base is refused."""
        from dia2.model.lora_bank import LoraBank

        with self._step_lock:
            if self.bank is None:
                self.bank = LoraBank(self.model, self.config.max_adapters, self.config.max_adapter_rank)
            self.bank.load(name, adapter, revision)

    def unload_adapter(self, name: str) -> None:
        """Unload an adapter no request is using (cancel those first)."""
        with self._step_lock:
            index = self._adapter_index(name)
            users = [j for j in [*self._jobs, *self._queue] if j.adapter == index]
            if users:
                raise EngineError(
                    f"adapter '{name}' is in use by {len(users)} request(s): wait for them or cancel them, then unload"
                )
            assert self.bank is not None
            self.bank.unload(name)

    @property
    def adapters(self) -> tuple[str, ...]:
        return self.bank.names if self.bank is not None else ()

    def _adapter_index(self, name: str | None) -> int:
        if name is None:
            return 0
        if self.bank is None:
            from dia2.model.adapters import AdapterError

            raise AdapterError(f"no adapter named '{name}' is loaded (loaded: none): load it first with Engine.load_adapter")
        return self.bank.index(name)

    # --- the engine thread ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Engine:
        """Run frames in a background thread whenever there is work."""
        if not self.running:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, daemon=True, name="dia2-engine")
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread after the current frame; requests in flight stay where they are."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _wake(self) -> None:
        with self._lock:
            self._lock.notify_all()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._has_work():
                    self._lock.wait()
                if self._stopping:
                    return
            self.step()

    def _has_work(self) -> bool:
        return bool(self._queue) or any(not j.waiting or j.handle.cancelled for j in self._jobs)

    # --- one frame -----------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> bool:
        """Run one frame for every request; returns whether any request is left."""
        with self._step_lock:
            self._drop_cancelled()
            self._admit()
            self._prefill_ready()
            advancing = self._advance()
            if advancing:
                self._failing(advancing, self._audio)
            continuing = [j for j in advancing if j in self._jobs and j.prefilled]
            if continuing:
                self._failing(continuing, self._head)
            with self._lock:
                return bool(self._jobs or self._queue)

    def _failing(self, jobs: list[_Job], work) -> None:
        """Run batched work; if it raises, every job in it fails (the others go on)."""
        try:
            work(jobs)
        except Exception as exc:  # a batched model call failed: its rows cannot be told apart
            logger.exception("a batched step failed for %d request(s)", len(jobs))
            for job in jobs:
                self._finish(job, exc)

    def _drop_cancelled(self) -> None:
        with self._lock:
            for job in [j for j in self._queue if j.handle.cancelled]:
                self._queue.remove(job)
                job.emit(_Cancelled())
        for job in [j for j in self._jobs if j.handle.cancelled]:
            self._finish(job, _Cancelled())

    def _admit(self) -> None:
        """Queued requests take free slots: parsed and planned (a bad script or voice fails here)."""
        while len(self._jobs) < self.config.slots:
            with self._lock:
                if not self._queue:
                    return
                job = self._queue.popleft()
            self._jobs.append(job)
            try:
                job.utterance = self._utterance(job)
            except Exception as exc:
                self._finish(job, exc)

    def _utterance(self, job: _Job) -> Utterance:
        """The job's next utterance: its script's next part, or its streamed script."""
        tts, request = self.tts, job.request
        if isinstance(request.script, str):
            if job.speech is None:
                job.speech = LongForm(tts, request.script, request.config, request.voice)
            plan = job.speech.next_plan()
            assert plan is not None, "a finished script has no next part"
        else:
            feed = _StreamedText(request.script, ScriptParser(tts.tokenizer, tts.ids), self._wake)
            plan = tts.plan([], request.config, request.voice, feed)
        utterance = Utterance(self.model, *plan)
        if utterance.capacity > self.length:
            raise EngineError(
                f"the request needs {utterance.capacity} frames but a slot holds {self.length}: shorten the voice "
                f"prefix, or run the engine with a larger EngineConfig.max_prefix_frames"
            )
        return utterance

    def _prefill_ready(self) -> None:
        """Prefill, alone, each admitted request whose text is ready, into fresh cache rows."""
        for job in [j for j in self._jobs if not j.prefilled]:
            try:
                if job.utterance is None or not job.utterance.prepare():
                    continue
                self._prefill(job)
            except Exception as exc:
                self._finish(job, exc)

    def _prefill(self, job: _Job) -> None:
        utterance = job.utterance
        assert utterance is not None
        start = len(self._owners)
        job.rows = list(range(start, start + utterance.branches))
        self._owners += [job] * utterance.branches
        rows = self.state.rows(start, start + utterance.branches, filled=0)
        rows.position.zero_()
        with self._routed([job.adapter] * utterance.branches):
            out = self.model.prefill(utterance.prefill_columns(), rows)
        c = job.config
        action = guided_sample(out.action_logits[:, -1], c.text, c.cfg_scale, c.cfg_filter_k, job.generator)
        job.pending = action, out.hidden[:, -1], out.cb0_logits[:, -1]
        job.prefilled = True
        job.emit(utterance.first_update())

    def _advance(self) -> list[_Job]:
        """Step the state machine of every utterance that can; those waiting for text sit out."""
        advancing = []
        for job in [j for j in self._jobs if j.prefilled]:
            try:
                if not job.utterance.ready():
                    continue
                job.text = job.utterance.advance(job.pending[0])
                advancing.append(job)
            except Exception as exc:
                self._finish(job, exc)
        return advancing

    def _audio(self, jobs: list[_Job]) -> None:
        """Codebook 0 and every depformer stage of each job's next column, batched over jobs."""
        hidden = torch.cat([j.pending[1] for j in jobs])
        text = torch.cat([j.text for j in jobs])
        sizes = [len(j.rows) for j in jobs]
        adapters = [j.adapter for j, n in zip(jobs, sizes) for _ in range(n)]
        state = self.state.rows(0, hidden.shape[0], filled=0)
        codes = [
            [guided_sample(j.pending[2], j.config.audio, j.config.cfg_scale, j.config.cfg_filter_k, j.generator, self.banned_cb0)]
            for j in jobs
        ]
        with self._routed(adapters):
            for stage in range(self.model.config.num_depformer_stages):
                tokens = torch.cat([c[-1].expand(n) for c, n in zip(codes, sizes)])
                logits = self.model.depformer_step(stage, hidden, tokens, state, text=text).split(sizes)
                for j, c, rows in zip(jobs, codes, logits):
                    c.append(guided_sample(rows, j.config.audio, j.config.cfg_scale, j.config.cfg_filter_k, j.generator))
        for job, c in zip(jobs, codes):
            update = job.utterance.write(torch.stack(c))
            job.emit(update)
            if update.done:
                self._next_part(job)

    def _next_part(self, job: _Job) -> None:
        """A finished utterance: the job's script goes on with its next part (prefilled into
        fresh rows at the next frame), or the job leaves its slot."""
        if job.speech is None or job.speech.last_part:
            self._finish(job, None)
            return
        self._release_rows(job)
        job.prefilled = False
        try:
            job.utterance = self._utterance(job)
        except Exception as exc:
            self._finish(job, exc)

    def _head(self, jobs: list[_Job]) -> None:
        """The decoder on each continuing job's new column, one step over all cache rows.

        Rows of jobs waiting for text run too (the batch is one slice of the caches): they write
        at their next column, which their own next step overwrites, and their outputs are dropped.
        """
        stepping = set(map(id, jobs))
        R = len(self._owners)
        columns = torch.empty(R, self.model.config.data.channels, 1, dtype=torch.long, device=self.model.device)
        positions = []
        for row, job in enumerate(self._owners):
            branch = job.rows.index(row)
            columns[row] = job.utterance.next_column()[branch]
            positions.append(job.utterance.column + (0 if id(job) in stepping else 1))
        rows = self.state.rows(0, R, filled=max(positions))
        rows.position.copy_(torch.tensor(positions))
        with self._routed([j.adapter for j in self._owners]):
            out = self.model.step(columns, rows)
        for job in jobs:
            index = torch.tensor(job.rows, device=self.model.device)
            c = job.config
            logits = out.action_logits[index, -1]
            action = guided_sample(logits, c.text, c.cfg_scale, c.cfg_filter_k, job.generator)
            job.pending = action, out.hidden[index, -1], out.cb0_logits[index, -1]

    def _routed(self, adapters: list[int]):
        """Route each batch row to its adapter for the model calls in the block."""
        if self.bank is None or not any(adapters):
            return nullcontext()
        return self.bank.routed(torch.tensor(adapters, device=self.model.device))

    def _finish(self, job: _Job, error: BaseException | None) -> None:
        """Take a job out of its slot, free its cache rows, and end its handle with `error`."""
        if job in self._jobs:
            self._jobs.remove(job)
        self._release_rows(job)
        if error is not None:
            if not isinstance(error, _Cancelled):
                logger.info("request %d failed: %s", job.handle.number, error)
            job.emit(error)

    def _release_rows(self, job: _Job) -> None:
        """Free a job's cache rows, moving the last rows in use into the holes (rows stay dense)."""
        holes = sorted(job.rows)
        job.rows = []
        if not holes:
            return
        keep = len(self._owners) - len(holes)
        movers = [r for r in range(keep, len(self._owners)) if r not in holes]
        for src, dst in zip(movers, [h for h in holes if h < keep]):
            owner = self._owners[src]
            used = owner.utterance.column + 2  # columns written, plus a waiting row's overwritable one
            for cache in self.state.decoder:
                cache.k[dst, :, :used] = cache.k[src, :, :used]
                cache.v[dst, :, :used] = cache.v[src, :, :used]
            owner.rows[owner.rows.index(src)] = dst
            self._owners[dst] = owner
        del self._owners[keep:]


