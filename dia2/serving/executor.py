"""The engine's executor: the model work of a frame, over the row table.

The engine is split as vLLM splits its scheduler and executor: `dia2.serving.engine` schedules
(the queue, admission, adapters, each utterance's state machine, what a failure ends) and hands
the executor the tasks to run; the executor owns the cache rows (`dia2.serving.rows`) and the frame
kernels, and runs the model. A `Task` is what crosses between them: one request, with its
utterance, its sampling settings and seed as tensors, and the action its next step takes.

A frame's model work, in order:
- `prefill`: a task alone into fresh rows (its prefix, or the lone bos column); draws its first action;
- `audio`: codebook 0 and then every depformer stage of every task's next column, one batched pass;
- `head`: the decoder on the stepping tasks' new columns, one batched step over all rows, each row
  at its own position; draws their next actions.
Eager, a batched call runs the rows in use; under CUDA graphs it runs every row and every slot
(one fixed shape), those not in use computed and ignored; compiled, it runs the rows in use, at
least `MIN_BATCH` rows and utterances (one compiled graph for every batch size).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from dia2.generation.config import GenerationConfig
from dia2.generation.graphs import MIN_BATCH, CompiledBatchKernels, GraphedBatchKernels, sampling_width
from dia2.generation.kernels import BatchKernels, FrameInputs, Rows
from dia2.generation.long_form import LongForm
from dia2.generation.loop import FrameUpdate, Utterance
from dia2.generation.sampling import KEEP_ALL, RowSampling, sample_action
from dia2.model.network import Dia2Model
from dia2.serving.requests import Channel, StreamedText
from dia2.serving.rows import RowTable


class Task:
    """A request in the engine: its channel, seed, adapter and, once admitted, its utterance and
    the action its next step takes (its cache rows are the row table's)."""

    def __init__(self, channel: Channel, seed: int) -> None:
        self.channel, self.seed_value = channel, seed
        self.request = channel.request
        self.adapter = 0  # its adapter's index in the bank, resolved when it takes a slot
        self.seed: Tensor | None = None  # [1] on the device, with the sampling settings (first prefill)
        self.text_params: RowSampling | None = None
        self.audio_params: RowSampling | None = None
        self.utterance: Utterance | None = None
        self.speech: LongForm | None = None  # a whole script, spoken part after part
        self.prefilled = False
        self.action: Tensor | None = None  # [1]: the next column's action, drawn, not yet taken

    @property
    def waiting(self) -> bool:
        """Whether it cannot go on until more of its streamed script arrives."""
        feed = self.utterance.feed if self.utterance is not None else None
        return isinstance(feed, StreamedText) and feed.waiting

    def emit(self, item: FrameUpdate | BaseException) -> None:
        """Deliver an update (of the whole script, for one spoken in parts) or the end."""
        if isinstance(item, FrameUpdate) and self.speech is not None:
            item = self.speech.record(item)
        self.channel.deliver(item)


def sampling_tensors(
    config: GenerationConfig, seed: int, model: Dia2Model, width: int | None, bucket: bool = False
) -> tuple[RowSampling, RowSampling, Tensor]:
    """One utterance's action and audio sampling settings and its seed [1], on the model's device
    (`bucket`: each width rounded up to a power of two, for compiled graphs)."""
    c, device = config, model.device
    settings = []
    for sampling, vocab in ((c.text, model.config.data.action_vocab_size), (c.audio, model.config.depformer_logit_size)):
        params = RowSampling.of([(sampling, c.cfg_scale, c.cfg_filter_k)], vocab, device, width)
        settings.append(dataclasses.replace(params, width=sampling_width(params.width, vocab)) if bucket else params)
    return *settings, torch.tensor([seed], dtype=torch.long, device=device)


class _Filler:
    """What an unused slot passes to a padded call: any valid settings (its draws are dropped),
    `width` wide (graphs: the vocabulary, the batch's fixed width; compiled: 1, so it widens nothing)."""

    def __init__(self, model: Dia2Model, width: int) -> None:
        self.text_params, self.audio_params, self.seed = sampling_tensors(GenerationConfig(), 0, model, width)


class FrameExecutor:
    """`slots` tasks' cache rows (up to two each: CFG) of `length` columns, and the frame kernels
    (eager, replayed from CUDA graphs, or compiled)."""

    def __init__(self, model: Dia2Model, slots: int, length: int, cuda_graph: bool, torch_compile: bool = False) -> None:
        self.model, self.slots, self.compiled = model, slots, torch_compile
        self.table: RowTable[Task] = RowTable(model, 2 * slots, length)
        # A batched call runs at least `_least` (rows, utterances), padded with rows not in use
        # and filler slots; `_width` is the top-k width of every sampling setting (None: its own).
        self._least, self._width = (0, 0), None
        if cuda_graph:  # one fixed shape: every row and every slot, the vocabulary's width
            self.kernels: BatchKernels = GraphedBatchKernels(model)
            self._least, self._width = (self.table.size, slots), KEEP_ALL
        elif torch_compile:  # no size-1 dimension, which would be specialised
            self.kernels = CompiledBatchKernels(model, self.table.size, max(slots, MIN_BATCH), length)
            self._least = (MIN_BATCH, MIN_BATCH)
        else:
            self.kernels = BatchKernels(model)
        self._filler = _Filler(model, self._width or 1)

    def tasks(self) -> list[Task]:
        """The tasks holding cache rows, in the order of their first row."""
        return self.table.owners()

    def prefill(self, task: Task) -> None:
        """Prefill the task's utterance alone into fresh rows and draw its first action."""
        utterance = task.utterance
        assert utterance is not None
        n, columns = utterance.branches, utterance.prefill_columns()
        rows = self.table.claim(task, n)
        with self.kernels.routed(torch.full((n,), task.adapter, device=self.model.device)):
            out = self.model.prefill(columns, rows)
        if task.seed is None:  # its sampling settings, once: a script's later parts keep them
            task.text_params, task.audio_params, task.seed = sampling_tensors(
                utterance.config, task.seed_value, self.model, self._width, bucket=self.compiled
            )
        alone = Rows.of([n], self.model.device)
        steps = torch.tensor([utterance.draw_step], device=self.model.device)
        task.action = sample_action(out.action_logits[:, -1], alone.cond, alone.uncond, task.text_params, task.seed, steps)
        self.table.keep(task, out.hidden[:, -1], out.cb0_logits[:, -1], columns.shape[-1])

    def audio(self) -> list[tuple[Task, Tensor]]:
        """Codebook 0 and every depformer stage of every task's next column, one batched pass:
        (task, codes [K]) in row order. The codes of a task that did not advance are junk."""
        table, R, tasks = self.table, self._batch_rows(), self.tasks()
        codes = self.kernels.audio(table.hidden[:R], table.cb0[:R], table.text[:R], table.batch(R), self._inputs(tasks, R))
        return list(zip(tasks, codes))

    def head(self, stepping: list[Task]) -> None:
        """The decoder on each stepping task's new column, one step over all cache rows; their
        next actions are drawn.

        Rows of tasks not stepping (waiting for text) run too (the batch is one slice of the
        caches): they write at their next column, which their own next step overwrites, and
        their outputs are dropped.
        """
        table, R, tasks = self.table, self._batch_rows(), self.tasks()
        for task in tasks:
            table.set_column(task, task.utterance.next_column())
        action, hidden, cb0 = self.kernels.head(table.columns[:R], table.at_positions(R), self._inputs(tasks, R))
        keeping = set(map(id, stepping))
        for i, task in enumerate(tasks):
            if id(task) in keeping:
                task.action = action[i : i + 1].clone()  # a graph overwrites its outputs at the next replay
                rows = table.rows(task)
                table.keep(task, hidden[rows], cb0[rows], 1)

    def _batch_rows(self) -> int:
        """Rows one batched call runs: those in use, padded up to the least."""
        return max(len(self.table), self._least[0])

    def _inputs(self, tasks: list[Task], rows: int) -> FrameInputs:
        """The frame's inputs for `tasks` over `rows` rows, padded up to the least utterances with
        slots that read row 0 and draw nothing anyone keeps."""
        pad = max(0, self._least[1] - len(tasks))
        index = {id(j): i for i, j in enumerate(tasks)}
        owners = self.table.owner_of_rows(rows)
        owner = [index[id(o)] if o is not None else 0 for o in owners]
        adapters = [o.adapter if o is not None else 0 for o in owners]
        as_tensor = lambda v: torch.tensor(v, dtype=torch.long, device=self.model.device)
        settings = [*tasks, *[self._filler] * pad]
        first, last = [self.table.rows(j)[0] for j in tasks], [self.table.rows(j)[-1] for j in tasks]
        return FrameInputs(
            Rows(as_tensor(first + [0] * pad), as_tensor(last + [0] * pad), as_tensor(owner)),
            as_tensor(adapters),
            torch.cat([j.seed for j in settings]),
            as_tensor([j.utterance.draw_step for j in tasks] + [0] * pad),
            RowSampling.cat([j.text_params for j in settings]),
            RowSampling.cat([j.audio_params for j in settings]),
        )
