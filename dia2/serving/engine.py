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

Cache rows are kept dense: rows 0..R-1 are in use, and a leaving request's rows are filled by
moving the last rows into them, so every batched step is one slice of the caches (no gather).
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
from torch import Tensor

from dia2.generation.long_form import LongForm, tail_frames
from dia2.generation.config import GenerationConfig
from dia2.generation.loop import FrameUpdate, Rows, Utterance
from dia2.generation.runtime import Dia2, seed_of
from dia2.generation.sampling import KEEP_ALL, RowSampling, sample_action
from dia2.model.network import Dia2Model
from dia2.serving.batch import BatchKernels, FrameInputs, GraphedBatchKernels
from dia2.serving.requests import (
    Cancelled,
    EngineError,
    EngineFull,
    Handle,
    Request,
    StreamedText,
)
from dia2.text.script import ScriptParser

if TYPE_CHECKING:
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


class _Job:
    """A request in the engine: its handle, seed, adapter and, once admitted, its utterance,
    cache rows and the model outputs its next step samples from."""

    def __init__(self, handle: Handle, seed: int) -> None:
        self.handle, self.seed_value = handle, seed
        self.adapter = 0  # its adapter's index in the bank, resolved when it takes a slot
        self.seed: Tensor | None = None  # [1] on the device, with the sampling settings (first prefill)
        self.text_params: RowSampling | None = None
        self.audio_params: RowSampling | None = None
        self.request = handle.request
        self.utterance: Utterance | None = None
        self.speech: LongForm | None = None  # a whole script, spoken part after part
        self.prefilled = False
        self.rows: list[int] = []
        self.action: Tensor | None = None  # [1]: the next column's action, drawn, not yet taken

    @property
    def waiting(self) -> bool:
        """Whether it cannot go on until more of its streamed script arrives."""
        feed = self.utterance.feed if self.utterance is not None else None
        return isinstance(feed, StreamedText) and feed.waiting

    @property
    def config(self) -> GenerationConfig:
        assert self.utterance is not None
        return self.utterance.config

    def sampling(self, model: Dia2Model, width: int | None) -> None:
        """Its sampling settings and seed as tensors (once, at its first prefill)."""
        if self.seed is not None:
            return
        self.text_params, self.audio_params, self.seed = sampling_tensors(self.config, self.seed_value, model, width)

    def emit(self, item: FrameUpdate | BaseException) -> None:
        if isinstance(item, FrameUpdate) and self.speech is not None:
            item = self.speech.record(item)
        self.handle._deliver(item)


def sampling_tensors(
    config: GenerationConfig, seed: int, model: Dia2Model, width: int | None
) -> tuple[RowSampling, RowSampling, Tensor]:
    """One utterance's action and audio sampling settings and its seed [1], on the model's device."""
    c, device = config, model.device
    text_vocab, audio_vocab = model.config.data.action_vocab_size, model.config.depformer_logit_size
    text = RowSampling.of([(c.text, c.cfg_scale, c.cfg_filter_k)], text_vocab, device, width)
    audio = RowSampling.of([(c.audio, c.cfg_scale, c.cfg_filter_k)], audio_vocab, device, width)
    return text, audio, torch.tensor([seed], dtype=torch.long, device=device)


class _Filler:
    """What an unused slot passes to a graph replay: any valid settings (its draws are dropped)."""

    def __init__(self, model: Dia2Model) -> None:
        self.text_params, self.audio_params, self.seed = sampling_tensors(GenerationConfig(), 0, model, KEEP_ALL)


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
        if config.max_prefix_frames < 2 * tail_frames(context):
            raise EngineError(
                f"EngineConfig.max_prefix_frames is {config.max_prefix_frames}, but long scripts carry up to "
                f"{2 * tail_frames(context)} frames of each part into the next: raise it to at least that"
            )
        self.length = context + config.max_prefix_frames
        max_rows = 2 * config.slots
        self.state = self.model.new_state(max_rows, self.length)
        self.state.position = torch.zeros(max_rows, dtype=torch.long, device=self.model.device)
        self.kernels = GraphedBatchKernels(self.model) if config.cuda_graph else BatchKernels(self.model)
        # Per row, what its next audio step reads: the decoder's hidden and cb0 logits of its last
        # column (from its prefill or the last batched step), and its next column's text.
        cfg, device = self.model.config, self.model.device
        self._hidden = torch.zeros(max_rows, cfg.model.decoder.n_embd, dtype=self.model.compute_dtype, device=device)
        self._cb0 = torch.zeros(max_rows, cfg.data.audio_vocab_size, device=device)
        self._text = torch.zeros(max_rows, 2, dtype=torch.long, device=device)
        self._columns = torch.zeros(max_rows, cfg.data.channels, 1, dtype=torch.long, device=device)
        self._filler = _Filler(self.model) if config.cuda_graph else None
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
            job = _Job(Handle(self, request, next(self._numbers)), seed_of(request.config))
            self._queue.append(job)
            self._lock.notify_all()
        return job.handle

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
                self.kernels.bank = LoraBank(self.model, self.config.max_adapters, self.config.max_adapter_rank)
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
        return self.kernels.bank

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

    def _withdraw(self, handle: Handle) -> None:
        """A cancelled request that is still queued leaves the queue now (its place is free for the
        next `submit`); one in a slot leaves at the next frame boundary."""
        with self._lock:
            job = next((j for j in self._queue if j.handle is handle), None)
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
                self._failing(self._audio, advancing)
            continuing = [j for j in advancing if j in self._jobs and j.prefilled]
            if continuing:
                self._failing(self._head, continuing)
            with self._lock:
                return bool(self._jobs or self._queue)

    def _failing(self, work: Callable[[list[_Job]], None], jobs: list[_Job]) -> None:
        """Run batched work; if it raises, every job in the batch fails (the queue goes on)."""
        try:
            work(jobs)
        except Exception as exc:  # a batched model call failed: its rows cannot be told apart
            logger.exception("a batched step failed for %d request(s)", len(jobs))
            for job in self._batch_jobs():
                self._finish(job, exc)

    def _drop_cancelled(self) -> None:
        with self._lock:
            for job in [j for j in self._queue if j.handle.cancelled]:
                self._queue.remove(job)
                job.emit(Cancelled())
        for job in [j for j in self._jobs if j.handle.cancelled]:
            self._finish(job, Cancelled())

    def _admit(self) -> None:
        """Queued requests take free slots: parsed and planned (a bad script or voice fails here)."""
        while len(self._jobs) < self.config.slots:
            with self._lock:
                if not self._queue:
                    return
                job = self._queue.popleft()
                self._jobs.append(job)  # under the lock: `queued` never sees it in neither
            job.handle.admitted = time.perf_counter()
            try:
                job.adapter = self._adapter_index(job.request.adapter)  # under the frame lock: it cannot change
                job.utterance = self._utterance(job)
            except Exception as exc:
                self._finish(job, exc)

    def _utterance(self, job: _Job) -> Utterance:
        """The job's next utterance: its script's next part, or its streamed script."""
        tts, request = self.tts, job.request
        if isinstance(request.script, str):
            if job.speech is None:
                job.speech = LongForm(tts, request.script, request.config, request.prefix)
            plan = job.speech.next_plan()
            assert plan is not None, "a finished script has no next part"
        else:
            feed = StreamedText(request.script, ScriptParser(tts.tokenizer, tts.ids), self._wake)
            plan = tts.plan([], request.config, request.prefix, feed)
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
        start, n = len(self._owners), utterance.branches
        job.rows = list(range(start, start + n))
        self._owners += [job] * n
        rows = self.state.rows(start, start + n, filled=0)
        rows.position.zero_()
        with self.kernels.routed(torch.full((n,), job.adapter, device=self.model.device)):
            out = self.model.prefill(utterance.prefill_columns(), rows)
        job.sampling(self.model, self._width)
        alone = Rows.of([n], self.model.device)
        job.action = sample_action(out.action_logits[:, -1], alone.cond, alone.uncond, job.text_params, job.seed, self._steps([job]))
        self._hidden[start : start + n] = out.hidden[:, -1]
        self._cb0[start : start + n] = out.cb0_logits[:, -1]
        job.prefilled = True
        job.emit(utterance.first_update())

    def _batch_jobs(self) -> list[_Job]:
        """The jobs holding cache rows, in the order of their first row."""
        return sorted({id(j): j for j in self._owners}.values(), key=lambda j: j.rows[0])

    def _advance(self) -> list[_Job]:
        """Step the state machine of every utterance that can; those waiting for text sit out.
        The actions come to the host together: one device sync for the frame."""
        jobs = self._batch_jobs()
        actions = torch.cat([j.action for j in jobs]).tolist() if jobs else []
        advancing = []
        for job, action in zip(jobs, actions):
            try:
                if not job.utterance.ready():
                    continue
                self._text[job.rows] = job.utterance.advance(action)
                advancing.append(job)
            except Exception as exc:
                self._finish(job, exc)
        return advancing

    def _audio(self, advancing: list[_Job]) -> None:
        """Codebook 0 and every depformer stage of every job's next column, one batched pass;
        the codes of jobs waiting for text are dropped."""
        jobs, R = self._batch_jobs(), self._batch_rows()
        inputs = self._inputs(jobs, R)
        state = self.state.rows(0, R, filled=0)
        codes = self.kernels.audio(self._hidden[:R], self._cb0[:R], self._text[:R], state, inputs)
        stepping = set(map(id, advancing))
        for job, c in zip(jobs, codes):
            if id(job) not in stepping:
                continue
            update = job.utterance.write(c)
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

    def _head(self, continuing: list[_Job]) -> None:
        """The decoder on each continuing job's new column, one step over all cache rows.

        Rows of jobs waiting for text run too (the batch is one slice of the caches): they write
        at their next column, which their own next step overwrites, and their outputs are dropped.
        """
        jobs, R = self._batch_jobs(), self._batch_rows()
        stepping = set(map(id, continuing))
        positions = [0] * R
        for job in jobs:
            column = job.utterance.next_column()
            for branch, row in enumerate(job.rows):
                self._columns[row] = column[branch]
                positions[row] = job.utterance.column + (0 if id(job) in stepping else 1)
        state = self.state.rows(0, R, filled=max(positions))
        state.position.copy_(torch.tensor(positions))
        action, hidden, cb0 = self.kernels.head(self._columns[:R], state, self._inputs(jobs, R))
        for i, job in enumerate(jobs):
            if id(job) in stepping:
                job.action = action[i : i + 1].clone()  # a graph overwrites its outputs at the next replay
                self._hidden[job.rows] = hidden[job.rows]
                self._cb0[job.rows] = cb0[job.rows]

    def _batch_rows(self) -> int:
        """Rows one batched call runs: those in use (eager), or all (graphs: one fixed shape)."""
        return self.state.position.shape[0] if self.config.cuda_graph else len(self._owners)

    @property
    def _width(self) -> int | None:
        """Top-k width of the sampling settings: fixed under graphs (the vocabulary)."""
        return KEEP_ALL if self.config.cuda_graph else None

    def _inputs(self, jobs: list[_Job], rows: int) -> FrameInputs:
        """The frame's inputs for `jobs` over `rows` rows; under graphs padded to every slot
        (slots not in use read row 0 and draw nothing anyone keeps)."""
        device = self.model.device
        pad = self.config.slots - len(jobs) if self.config.cuda_graph else 0
        index = {id(j): i for i, j in enumerate(jobs)}
        owner = [index[id(self._owners[r])] if r < len(self._owners) else 0 for r in range(rows)]
        adapters = [self._owners[r].adapter if r < len(self._owners) else 0 for r in range(rows)]
        as_tensor = lambda v: torch.tensor(v, dtype=torch.long, device=device)
        settings = [*jobs, *[self._filler] * pad]
        return FrameInputs(
            Rows(as_tensor([j.rows[0] for j in jobs] + [0] * pad), as_tensor([j.rows[-1] for j in jobs] + [0] * pad), as_tensor(owner)),
            as_tensor(adapters),
            torch.cat([j.seed for j in settings]),
            as_tensor([j.utterance.draw_step for j in jobs] + [0] * pad),
            RowSampling.cat([j.text_params for j in settings]),
            RowSampling.cat([j.audio_params for j in settings]),
        )

    def _steps(self, jobs: list[_Job]) -> Tensor:
        """The frame each job draws for next: [J] long on the model's device."""
        return torch.tensor([j.utterance.draw_step for j in jobs], device=self.model.device)

    def _finish(self, job: _Job, error: BaseException | None) -> None:
        """Take a job out of its slot, free its cache rows, and end its handle with `error`."""
        if job in self._jobs:
            self._jobs.remove(job)
        self._release_rows(job)
        if error is not None:
            if not isinstance(error, Cancelled):
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
            for buffer in (self._hidden, self._cb0, self._text):
                buffer[dst] = buffer[src]
            owner.rows[owner.rows.index(src)] = dst
            self._owners[dst] = owner
        del self._owners[keep:]
