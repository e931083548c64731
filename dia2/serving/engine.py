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
from typing import TYPE_CHECKING

import torch

from dia2.generation.long_form import LongForm, carry_frames
from dia2.generation.loop import Utterance
from dia2.generation.tts import Dia2, seed_of
from dia2.model.layers import Linear, pack_linears
from dia2.serving.config import EngineConfig
from dia2.serving.executor import FrameExecutor, Task
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


class Engine:
    """A fixed number of slots generating at once on one `Dia2`'s model.

        engine = Engine(Dia2.from_repo("nari-labs/Dia2-2B"), EngineConfig(slots=16)).start()
        handle = engine.submit(Request("[S1] Hello there.", GenerationConfig(seed=1)))
        for chunk in handle: ...

    Without `start()` the engine runs in the thread that reads a handle (or calls `step()`).
    The engine owns its model while it runs: do not call that `Dia2`'s own generate/stream on
    the same model meanwhile.
    """

    def __init__(self, tts: Dia2, config: EngineConfig | None = None) -> None:
        self.tts, self.model = tts, tts.model
        self.config = config = config or EngineConfig()
        context = self.model.config.runtime.max_context_steps
        if config.max_prefix_frames < 2 * carry_frames(context):
            raise EngineError(
                f"EngineConfig.max_prefix_frames is {config.max_prefix_frames}, but long scripts carry up to "
                f"{2 * carry_frames(context)} frames of each part into the next: raise it to at least that"
            )
        self.length = context + config.max_prefix_frames
        self.executor = FrameExecutor(self.model, config.slots, self.length, config.cuda_graph, config.torch_compile)
        if self.model.device.type == "cpu":
            _pack_weights(self.model, config.packed_weights)
        self._tasks: list[Task] = []  # tasks holding a slot
        self._queue: deque[Task] = deque()
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
            waiting = len(self._tasks) + len(self._queue) - self.config.slots
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
            task = Task(Channel(request, next(self._numbers)), seed_of(request.config))
            self._queue.append(task)
            self._lock.notify_all()
        return Handle(task.channel, self)

    @property
    def busy_slots(self) -> int:
        """Slots holding a request (being prefilled or generating)."""
        return len(self._tasks)

    @property
    def queued(self) -> int:
        """Requests waiting for a slot: those beyond the free slots, so never more than
        `max_queued` (a request that a free slot takes at the next frame is not waiting)."""
        with self._lock:
            return max(0, len(self._tasks) + len(self._queue) - self.config.slots)

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
                users = [j for j in [*self._tasks, *self._queue] if j.request.adapter == name]
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
            task = next((j for j in self._queue if j.channel is channel), None)
            if task is not None:
                self._queue.remove(task)
            self._lock.notify_all()
        if task is not None:
            task.emit(Cancelled())

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
                    for task in list(self._tasks):
                        self._finish(task, exc)

    def _has_work(self) -> bool:
        return bool(self._queue) or any(not j.waiting or j.channel.cancelled for j in self._tasks)

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
            continuing = [j for j in advancing if j in self._tasks and j.prefilled]
            if continuing:
                self._failing(self.executor.head, continuing)
            with self._lock:
                return bool(self._tasks or self._queue)

    def _failing(self, work: Callable[[list[Task]], None], tasks: list[Task]) -> None:
        """Run batched work; if it raises, every task in the batch fails (the queue goes on)."""
        try:
            work(tasks)
        except Exception as exc:  # a batched model call failed: its rows cannot be told apart
            logger.exception("a batched step failed for %d request(s)", len(tasks))
            for task in self.executor.tasks():
                self._finish(task, exc)

    def _drop_cancelled(self) -> None:
        with self._lock:
            for task in [j for j in self._queue if j.channel.cancelled]:
                self._queue.remove(task)
                task.emit(Cancelled())
        for task in [j for j in self._tasks if j.channel.cancelled]:
            self._finish(task, Cancelled())

    def _admit(self) -> None:
        """Queued requests take free slots: parsed and planned (a bad script or voice fails here)."""
        while len(self._tasks) < self.config.slots:
            with self._lock:
                if not self._queue:
                    return
                task = self._queue.popleft()
                self._tasks.append(task)  # under the lock: `queued` never sees it in neither
            task.channel.admitted = time.perf_counter()
            try:
                task.adapter = self._adapter_index(task.request.adapter)  # under the frame lock: it cannot change
                task.utterance = self._utterance(task)
            except Exception as exc:
                self._finish(task, exc)

    def _utterance(self, task: Task) -> Utterance:
        """The task's next utterance: its script's next part, or its streamed script."""
        tts, request = self.tts, task.request
        if isinstance(request.script, str):
            if task.speech is None:
                task.speech = LongForm(tts, request.script, request.config, request.prefix)
            plan = task.speech.next_plan()
            assert plan is not None, "a finished script has no next part"
        else:
            feed = StreamedText(request.script, ScriptParser(tts.tokenizer, tts.ids), self._wake)
            plan = tts.plan([], request.config, request.prefix, feed)
        utterance = Utterance(self.model, plan)
        if utterance.capacity > self.length:
            raise EngineError(
                f"the request needs {utterance.capacity} frames but a slot holds {self.length}: shorten the voice "
                f"prefix, or run the engine with a larger EngineConfig.max_prefix_frames"
            )
        return utterance

    def _prefill_ready(self) -> None:
        """Prefill, alone, each admitted request whose text is ready, into fresh cache rows."""
        for task in [j for j in self._tasks if not j.prefilled]:
            try:
                if task.utterance is None or not task.utterance.prepare():
                    continue
                self.executor.prefill(task)
                task.prefilled = True
                task.emit(task.utterance.first_update())
            except Exception as exc:
                self._finish(task, exc)

    def _advance(self) -> list[Task]:
        """Step the state machine of every utterance that can; those waiting for text sit out.
        The actions come to the host together: one device sync for the frame."""
        tasks = self.executor.tasks()
        actions = torch.cat([j.action for j in tasks]).tolist() if tasks else []
        advancing = []
        for task, action in zip(tasks, actions):
            try:
                if not task.utterance.ready():
                    continue
                self.executor.table.set_text(task, task.utterance.advance(action))
                advancing.append(task)
            except Exception as exc:
                self._finish(task, exc)
        return advancing

    def _audio(self, advancing: list[Task]) -> None:
        """Every task's next column's codes, one batched pass; those of the advancing tasks are
        written and delivered (the codes of tasks waiting for text are dropped)."""
        stepping = set(map(id, advancing))
        for task, codes in self.executor.audio():
            if id(task) not in stepping:
                continue
            update = task.utterance.write(codes)
            task.emit(update)
            if update.done:
                self._next_part(task)

    def _next_part(self, task: Task) -> None:
        """A finished utterance: the task's script goes on with its next part (prefilled into
        fresh rows at the next frame), or the task leaves its slot."""
        if task.speech is None or task.speech.last_part:
            self._finish(task, None)
            return
        self.executor.table.release(task)
        task.prefilled = False
        try:
            task.utterance = self._utterance(task)
        except Exception as exc:
            self._finish(task, exc)

    def _finish(self, task: Task, error: BaseException | None) -> None:
        """Take a task out of its slot, free its cache rows, and end its handle with `error`."""
        if task in self._tasks:
            self._tasks.remove(task)
        self.executor.table.release(task)
        if error is not None:
            if not isinstance(error, Cancelled):
                logger.info("request %d failed: %s", task.channel.number, error)
            task.emit(error)


def _pack_weights(model, enabled: bool) -> None:
    """Packed copies of the linear weights for eager CPU frames, or none (EngineConfig.packed_weights)."""
    module = model if isinstance(model, torch.nn.Module) else model.model  # an AdaptedModel's own
    if pack_linears(module, enabled):
        weights = [m.weight for m in module.modules() if isinstance(m, Linear) and m.weight.dtype == torch.float32]
        megabytes = sum(w.numel() * w.element_size() for w in weights) / 2**20
        if weights:
            logger.info("the engine multiplies by packed copies of %d linear weights (%.0f MB more memory)", len(weights), megabytes)
