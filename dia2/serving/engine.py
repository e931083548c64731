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
sampling settings and seed (draws are keyed by seed, frame and stream, so they do not depend on
the batch: `dia2.generation.sampling`), its own CFG (a second cache row only when it guides)
and its own LoRA adapter (`dia2.model.lora_bank`, per row, never merged). So its tokens are
those `Dia2.generate`/`stream` give for it alone with the same seed, whatever shares the batch
and whenever it joined, up to the float rounding of a batched matmul (a token could flip only
where two choices tie to ~1e-6).

The engine schedules; the model work of a frame is its executor's (`dia2.serving.executor`),
which keeps the cache rows dense (`dia2.serving.rows`: rows 0..R-1 in use, so every batched step
is one slice of the caches, each row at its own position).

The engine and a client meet at a `Channel` (`dia2.serving.requests`): the engine delivers a
request's updates into it and reads its cancel; the client's `Handle` reads the channel and asks
the engine only what `requests.Driver` names (step, withdraw, running, codec).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from dia2.generation.long_form import LongForm, tail_frames
from dia2.generation.loop import Utterance
from dia2.generation.runtime import Dia2, seed_of
from dia2.serving.executor import FrameExecutor, Job
from dia2.serving.requests import (
    Cancelled,
    Channel,
    EngineError,
    EngineFull,
    Handle,
    Request,
    StreamedText,
)
from dia2.text.script import ScriptParser

if TYPE_CHECKING:
    from dia2.audio.codec import MimiCodec
    from dia2.model.lora_bank import LoraBank

__all__ = ["Engine", "EngineConfig", "EngineError", "EngineFull", "Handle", "Request"]

logger = logging.getLogger(__name__)


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
    cuda_graph: bool = False
    """Replay each frame's work from two CUDA graphs over every slot (CUDA only; slots not in
    use are computed and ignored). Off: eager, over the rows in use only."""

    def __post_init__(self) -> None:
        for name in ("slots", "max_adapters", "max_adapter_rank"):
            if getattr(self, name) < 1:
                raise EngineError(f"EngineConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queued < 0 or self.max_prefix_frames < 0:
            raise EngineError("EngineConfig.max_queued and max_prefix_frames must be >= 0")


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
        context = self.model.config.runtime.max_context_steps
        if config.max_prefix_frames < 2 * tail_frames(context):
            raise EngineError(
                f"EngineConfig.max_prefix_frames is {config.max_prefix_frames}, but long scripts carry up to "
                f"{2 * tail_frames(context)} frames of each part into the next: raise it to at least that"
            )
        self.length = context + config.max_prefix_frames
        self.executor = FrameExecutor(self.model, config.slots, self.length, config.cuda_graph)
        self._jobs: list[Job] = []  # jobs holding a slot
        self._queue: deque[Job] = deque()
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
        self._adapter_index(request.adapter)  # an unknown name is refused now; resolved again at admission
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
            job = Job(Channel(request, next(self._numbers)), seed_of(request.config))
            self._queue.append(job)
            self._lock.notify_all()
        return Handle(job.channel, self)

    @property
    def busy_slots(self) -> int:
        """Slots holding a request (being prefilled or generating)."""
        return len(self._jobs)

    @property
    def queued(self) -> int:
        """Requests waiting for a slot: those beyond the free slots, so never more than
        `max_queued` (a request that a free slot takes at the next frame is not waiting)."""
        with self._lock:
            return max(0, len(self._jobs) + len(self._queue) - self.config.slots)

    # --- adapters ------------------------------------------------------------------------------

    def load_adapter(self, name: str, adapter: str, revision: str | None = None) -> None:
        """Load a PEFT LoRA adapter (folder or Hub repo id) under `name`, between two frames;
        requests name it in `Request.adapter`. An adapter for another base is refused."""
        from dia2.model.lora_bank import LoraBank

        with self._step_lock:
            if self.bank is None:
                self.executor.kernels.bank = LoraBank(self.model, self.config.max_adapters, self.config.max_adapter_rank)
            self.bank.load(name, adapter, revision)

    def unload_adapter(self, name: str) -> None:
        """Unload an adapter no request is using (cancel those first)."""
        with self._step_lock:
            self._adapter_index(name)
            with self._lock:
                users = [j for j in [*self._jobs, *self._queue] if j.request.adapter == name]
            if users:
                raise EngineError(
                    f"adapter '{name}' is in use by {len(users)} request(s): wait for them or cancel them, then unload"
                )
            assert self.bank is not None
            self.bank.unload(name)

    @property
    def bank(self) -> LoraBank | None:
        return self.executor.kernels.bank

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

    @property
    def codec(self) -> MimiCodec:
        return self.tts.codec

    def withdraw(self, channel: Channel) -> None:
        """A cancelled request (`Handle.cancel`) that is still queued leaves the queue now (its
        place is free for the next `submit`); one in a slot leaves at the next frame boundary."""
        with self._lock:
            job = next((j for j in self._queue if j.channel is channel), None)
            if job is not None:
                self._queue.remove(job)
            self._lock.notify_all()
        if job is not None:
            job.emit(Cancelled())

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._has_work():
                    self._lock.wait()
                if self._stopping:
                    return
            try:
                self.step()
            except Exception as exc:  # the thread must outlive a bad frame: its requests fail, the queue goes on
                logger.exception("an engine frame failed")
                with self._step_lock:
                    for job in list(self._jobs):
                        self._finish(job, exc)

    def _has_work(self) -> bool:
        return bool(self._queue) or any(not j.waiting or j.channel.cancelled for j in self._jobs)

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
                self._failing(self._audio, advancing)
            continuing = [j for j in advancing if j in self._jobs and j.prefilled]
            if continuing:
                self._failing(self.executor.head, continuing)
            with self._lock:
                return bool(self._jobs or self._queue)

    def _failing(self, work: Callable[[list[Job]], None], jobs: list[Job]) -> None:
        """Run batched work; if it raises, every job in the batch fails (the queue goes on)."""
        try:
            work(jobs)
        except Exception as exc:  # a batched model call failed: its rows cannot be told apart
            logger.exception("a batched step failed for %d request(s)", len(jobs))
            for job in self.executor.jobs():
                self._finish(job, exc)

    def _drop_cancelled(self) -> None:
        with self._lock:
            for job in [j for j in self._queue if j.channel.cancelled]:
                self._queue.remove(job)
                job.emit(Cancelled())
        for job in [j for j in self._jobs if j.channel.cancelled]:
            self._finish(job, Cancelled())

    def _admit(self) -> None:
        """Queued requests take free slots: parsed and planned (a bad script or voice fails here)."""
        while len(self._jobs) < self.config.slots:
            with self._lock:
                if not self._queue:
                    return
                job = self._queue.popleft()
                self._jobs.append(job)  # under the lock: `queued` never sees it in neither
            job.channel.admitted = time.perf_counter()
            try:
                job.adapter = self._adapter_index(job.request.adapter)  # under the frame lock: it cannot change
                job.utterance = self._utterance(job)
            except Exception as exc:
                self._finish(job, exc)

    def _utterance(self, job: Job) -> Utterance:
        """The job's next utterance: its script's next part, or its streamed script."""
        tts, request = self.tts, job.request
        if isinstance(request.script, str):
            if job.speech is None:
                job.speech = LongForm(tts, request.script, request.config, request.voice)
            plan = job.speech.next_plan()
            assert plan is not None, "a finished script has no next part"
        else:
            feed = StreamedText(request.script, ScriptParser(tts.tokenizer, tts.ids), self._wake)
            plan = tts.plan([], request.config, request.voice, feed)
        utterance = Utterance(self.model, plan)
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
                self.executor.prefill(job)
                job.prefilled = True
                job.emit(job.utterance.first_update())
            except Exception as exc:
                self._finish(job, exc)

    def _advance(self) -> list[Job]:
        """Step the state machine of every utterance that can; those waiting for text sit out.
        The actions come to the host together: one device sync for the frame."""
        jobs = self.executor.jobs()
        actions = torch.cat([j.action for j in jobs]).tolist() if jobs else []
        advancing = []
        for job, action in zip(jobs, actions):
            try:
                if not job.utterance.ready():
                    continue
                self.executor.table.set_text(job, job.utterance.advance(action))
                advancing.append(job)
            except Exception as exc:
                self._finish(job, exc)
        return advancing

    def _audio(self, advancing: list[Job]) -> None:
        """Every job's next column's codes, one batched pass; those of the advancing jobs are
        written and delivered (the codes of jobs waiting for text are dropped)."""
        stepping = set(map(id, advancing))
        for job, codes in self.executor.audio():
            if id(job) not in stepping:
                continue
            update = job.utterance.write(codes)
            job.emit(update)
            if update.done:
                self._next_part(job)

    def _next_part(self, job: Job) -> None:
        """A finished utterance: the job's script goes on with its next part (prefilled into
        fresh rows at the next frame), or the job leaves its slot."""
        if job.speech is None or job.speech.last_part:
            self._finish(job, None)
            return
        self.executor.table.release(job)
        job.prefilled = False
        try:
            job.utterance = self._utterance(job)
        except Exception as exc:
            self._finish(job, exc)

    def _finish(self, job: Job, error: BaseException | None) -> None:
        """Take a job out of its slot, free its cache rows, and end its handle with `error`."""
        if job in self._jobs:
            self._jobs.remove(job)
        self.executor.table.release(job)
        if error is not None:
            if not isinstance(error, Cancelled):
                logger.info("request %d failed: %s", job.channel.number, error)
            job.emit(error)
