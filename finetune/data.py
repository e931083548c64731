"""Corpus -> training batches: loading, the compatibility check, grids, and a resumable sampler.

Rows become `TrainingExample`s through `dia2.data.teacher.build_example`, the same alignment, state
machine and delay code the decoder runs, so the grids the model trains on are the grids it
decodes (spec section 7). Batches are padded and masked by `dia2.data.teacher.collate`.

Batches are length-bucketed by grid columns: each epoch shuffles the utterances, sorts them by
length within buckets of `bucket_size`, cuts each bucket into batches of at most
`max_frames_per_batch` padded columns, and shuffles the batches. The order is a pure function of
(seed, epoch); N processes take an epoch's batches N at a time, process r the r-th of each group.
A batch's position (epoch, index in the epoch) is the same whatever the number of processes, and
so is its unconditional-dropout draw (a pure function of seed and position), so a `DataPosition`
(epoch, batches of it consumed by all processes) is all a checkpoint needs to continue on any
number of processes, and exactly on the same number.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dia2.data.corpus import (
    META_FILE,
    SPLITS,
    CorpusError,
    CorpusMeta,
    row_codes,
    row_words,
)
from dia2.data.teacher import Batch, GridError, TrainingExample, build_example, collate
from dia2.model.config import DataConfig
from dia2.text.script import TextTokenIds, Tokenizer
from dia2.text.tokenizer import tokenizer_fingerprint

logger = logging.getLogger(__name__)

_SHOW_SKIPPED = 3  # rows per skip reason named in the log


@dataclass
class SplitData:
    """The usable utterances of one split, and what was skipped (reason -> count)."""

    examples: list[TrainingExample]
    seconds: float
    skipped: Counter = field(default_factory=Counter)

    @property
    def lengths(self) -> list[int]:
        """Grid columns of each example (up to the column decoding stops at, `dia2.data.teacher`)."""
        return [e.columns for e in self.examples]


@dataclass
class TrainingData:
    """A loaded corpus: train / validation examples, its meta, and who speaks as [S1] / [S2]."""

    folder: Path
    meta: CorpusMeta
    train: SplitData
    validation: SplitData
    speakers: dict[str, list[str]]

    def summary(self) -> dict[str, Any]:
        """Corpus figures for the voice file and the model card."""
        return {
            "path": str(self.folder),
            "train_utterances": len(self.train.examples),
            "train_hours": round(self.train.seconds / 3600, 4),
            "validation_utterances": len(self.validation.examples),
            "validation_hours": round(self.validation.seconds / 3600, 4),
            "skipped": dict(self.train.skipped + self.validation.skipped),
        }


def text_token_ids(examples: Iterable[TrainingExample], ids: TextTokenIds) -> list[int]:
    """The text tokens the examples' two text streams use, without the control ids (bos, new_word,
    pad, zero: the same in every language, and what the unconditional branch reads)."""
    used: set[int] = set()
    for example in examples:
        used.update(example.tokens[:2].unique().tolist())
    return sorted(used - {ids.bos, ids.new_word, ids.pad, ids.zero})


def load_training_data(
    folder: str | Path,
    tokenizer: Tokenizer,
    ids: TextTokenIds,
    data: DataConfig,
    codec_fingerprint: str,
    max_columns: int,
    min_asr_confidence: float = 0.0,
) -> TrainingData:
    """Load a corpus folder and turn its rows into examples for this model.

    Refuses (CorpusError) a folder that is not a corpus, one built with another codec or
    tokenizer, and one without usable training rows. Rows that cannot become a grid, that are
    longer than `max_columns`, or whose ASR confidence is too low are skipped and counted.
    """
    import datasets

    folder = Path(folder)
    meta = CorpusMeta.load(folder)
    meta.check_compatible(codec_fingerprint, tokenizer_fingerprint(tokenizer), where=f"corpus {folder}")
    if meta.num_codebooks != data.num_codebooks:
        raise CorpusError(
            f"corpus {folder} holds {meta.num_codebooks} codebooks but the model uses {data.num_codebooks}: "
            "rebuild it for this model"
        )
    try:
        splits = datasets.load_from_disk(str(folder))
    except (FileNotFoundError, ValueError) as exc:
        raise CorpusError(f"{folder} has {META_FILE} but no readable dataset ({exc}); rebuild it with data prep") from exc
    if "train" not in splits:
        raise CorpusError(f"corpus {folder} has no 'train' split (splits: {list(splits)}); expected {list(SPLITS)}")
    parts = {}
    for split in SPLITS:
        rows = splits[split].with_format("numpy") if split in splits else []
        parts[split] = examples_from_rows(rows, tokenizer, ids, data, max_columns, min_asr_confidence)
        _log_skipped(folder, split, len(rows), parts[split])
    train = parts["train"]
    if not train.examples:
        reasons = ", ".join(f"{n} x {why}" for why, n in train.skipped.items()) or "the split is empty"
        raise CorpusError(
            f"corpus {folder} has no usable training utterances ({reasons}): add recordings with speech and run "
            "data prep again"
        )
    return TrainingData(folder, meta, train, parts["validation"], _speakers(splits["train"]))


def examples_from_rows(
    rows: Iterable[Mapping[str, Any]],
    tokenizer: Tokenizer,
    ids: TextTokenIds,
    data: DataConfig,
    max_columns: int,
    min_asr_confidence: float = 0.0,
) -> SplitData:
    """Corpus rows -> training examples, skipping (and counting) the rows that cannot train."""
    out = SplitData([], 0.0)
    for row in rows:
        if float(row["asr_confidence"]) < min_asr_confidence:
            out.skipped["asr_confidence below data.min_asr_confidence"] += 1
            continue
        try:
            example = build_example(row_codes(row), row_words(row), tokenizer, ids, data)
        except GridError as exc:
            out.skipped[f"no grid: {exc}"] += 1
            continue
        if example.columns > max_columns:
            out.skipped["longer than data.max_frames_per_batch"] += 1
            continue
        out.examples.append(example)
        out.seconds += float(row["duration"])
    return out


def _log_skipped(folder: Path, split: str, total: int, part: SplitData) -> None:
    for reason, count in list(part.skipped.items())[:_SHOW_SKIPPED]:
        logger.warning("corpus %s/%s: skipped %d of %d rows: %s", folder, split, count, total, reason)
    logger.info("corpus %s/%s: %d utterances, %.2f h", folder, split, len(part.examples), part.seconds / 3600)


def _speakers(rows: Any) -> dict[str, list[str]]:
    """Names behind [S1] / [S2], most frequent first (a row's `speakers` lists them in tag order)."""
    counts: dict[str, Counter] = {"S1": Counter(), "S2": Counter()}
    for names in rows["speakers"]:
        for tag, name in zip(counts, names):
            counts[tag][str(name)] += 1
    return {tag: [name for name, _ in c.most_common()] for tag, c in counts.items() if c}


# --- batching ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataPosition:
    """A place in the training data: an epoch, and a batch index within it (counted over every
    process's batches: the same value whatever the number of processes)."""

    epoch: int = 0
    index: int = 0


def epoch_batches(lengths: Sequence[int], max_frames: int, bucket_size: int, seed: int, epoch: int) -> list[list[int]]:
    """All batches of one epoch (lists of example indices), a pure function of its arguments.

    Each batch holds at most max_frames padded columns: len(batch) x longest <= max_frames.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)).tolist()
    batches: list[list[int]] = []
    for start in range(0, len(order), bucket_size):
        # Longest first: the first example of a batch fixes its padded length.
        bucket = sorted(order[start : start + bucket_size], key=lambda i: -lengths[i])
        batch: list[int] = []
        for i in bucket:
            if batch and lengths[batch[0]] * (len(batch) + 1) > max_frames:
                batches.append(batch)
                batch = []
            batch.append(i)
        batches.append(batch)
    return [batches[i] for i in rng.permutation(len(batches))]


class BatchStream:
    """This process's endless stream of training batches, resumable from a DataPosition.

    Every process computes the same epoch order; each draw consumes the next `world` batches of
    it, of which this process takes the one at offset `rank`. The epoch ends when fewer than
    `world` batches are left (dropped), so all processes run the same number of steps. `position`
    is the first batch not yet consumed by any process: the same on every process, and valid for
    any number of them.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_frames: int,
        bucket_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        position: DataPosition = DataPosition(),
    ) -> None:
        self.lengths, self.max_frames, self.bucket_size, self.seed = list(lengths), max_frames, bucket_size, seed
        self.rank, self.world = rank, world
        self.position = position
        self._epoch, self._batches = -1, []
        total = len(self.batches(0))
        if total < world:
            raise CorpusError(
                f"the training split gives {total} batch(es) per epoch, fewer than the {world} processes: use "
                "fewer processes or a lower data.max_frames_per_batch"
            )

    def batches(self, epoch: int) -> list[list[int]]:
        """Every batch of `epoch`, in order (all processes')."""
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, epoch_batches(self.lengths, self.max_frames, self.bucket_size, self.seed, epoch)
        return self._batches

    def shard(self, epoch: int) -> list[list[int]]:
        """This process's batches of `epoch` drawn from its start, in order."""
        batches = self.batches(epoch)
        usable = len(batches) // self.world * self.world
        return batches[self.rank : usable : self.world]

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple[DataPosition, list[int]]:
        """(position of this process's batch, its example indices); the stream moves past the
        `world` batches all processes draw together."""
        position = self.position
        if position.index + self.world > len(self.batches(position.epoch)):
            position = DataPosition(position.epoch + 1, 0)
        self.position = DataPosition(position.epoch, position.index + self.world)
        mine = DataPosition(position.epoch, position.index + self.rank)
        return mine, self.batches(mine.epoch)[mine.index]


def uncond_mask(seed: int, position: DataPosition, rank: int, size: int, prob: float) -> list[bool]:
    """Which utterances of the batch at `position` get the unconditional input (a pure function).

    The trainer passes rank 0: a position already names one batch of one process, and leaving
    the rank out keeps the draw the same when a run resumes on another number of processes."""
    rng = np.random.default_rng([seed, 1, position.epoch, position.index, rank])
    return (rng.random(size) < prob).tolist()


def make_batch(
    examples: Sequence[TrainingExample],
    indices: Sequence[int],
    data: DataConfig,
    ids: TextTokenIds,
    drop_mask: Sequence[bool] | None = None,
) -> Batch:
    """Padded, masked batch of examples[indices]; drop_mask[i] gives utterance i the unconditional input."""
    return collate([examples[i] for i in indices], data, ids, drop_mask)


def eval_batches(split: SplitData, max_frames: int, bucket_size: int, rank: int, world: int, limit: int = 0) -> list[list[int]]:
    """This process's validation batches: a fixed order (epoch 0, seed 0), optionally the first `limit`."""
    batches = epoch_batches(split.lengths, max_frames, bucket_size, seed=0, epoch=0)
    if limit:
        batches = batches[:limit]
    return batches[rank::world]

