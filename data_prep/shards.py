"""The run of one process among several: its shard into the shared cache, then (the main process) the corpus.

`data_prep.pipeline.run_prep` hands over here under a launcher (WORLD_SIZE > 1);
data_prep/distributed.py says how the processes share the work and report to each other. Each
process runs the steps a single process runs (`data_prep.work`) on its shard; the main process
then assembles the results in sorted order from the cache, as a single process does, so the
corpus is the same row for row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from data_prep.cache import CACHE_DIR, FileCache
from data_prep.config import PrepConfig
from data_prep.distributed import (
    ProcessGroup,
    ShardBoard,
    ShardError,
    assign_shards,
    cpu_share,
)
from data_prep.work import (
    PrepModel,
    PrepOutcome,
    PrepWork,
    load_work,
    prepare_files,
    write_outputs,
)
from data_prep.results import FileResult, Skip
from data_prep.sources import Sources
from data_prep.timing import StageTimer
from data_prep.transcribe import SegmentTranscriber
from dia2.device import resolve_device
from dia2.errors import Dia2Error

logger = logging.getLogger(__name__)


def run_sharded(
    config: PrepConfig, sources: Sources, model: PrepModel | None, transcriber: SegmentTranscriber | None, group: ProcessGroup
) -> PrepOutcome:
    """This process's shard into the shared cache; then the main process writes the corpus from it."""
    out = config.output
    out.mkdir(parents=True, exist_ok=True)
    cache = FileCache(out / CACHE_DIR, clean=group.is_main)  # before the board's first collective: no one writes yet
    with ShardBoard.open(out / CACHE_DIR, group, _listing_digest(sources)) as board:
        try:
            work, summary = _prepare_shard(config, sources, model, transcriber, group, cache)
            board.done(summary)
        except BaseException as exc:  # the other processes must stop with this error, not wait for the shard
            board.failed(exc)
            raise
        summaries = board.wait_for_all()
        if group.is_main:
            return _assemble(config, work, sources, summaries, cache, group)
        error, report = group.broadcast(None)
        if error is not None:
            raise error
        return PrepOutcome(out, report)


def _prepare_shard(
    config: PrepConfig, sources: Sources, model: PrepModel | None, transcriber: SegmentTranscriber | None,
    group: ProcessGroup, cache: FileCache,
) -> tuple[PrepWork, dict[str, Any]]:
    """Load the models on this process's device and prepare its shard; the shard's summary for the board."""
    start = time.perf_counter()
    local = _own_devices(config, group)
    work = load_work(local, sources, model, transcriber)
    loaded = time.perf_counter()
    sizes = [_size(f.path) for f in sources.files]
    shard = [sources.files[i] for i in assign_shards(sizes, group.world_size)[group.rank]]
    results, keys, reused = prepare_files(work, shard, cache, f"shard {group.rank}")
    logger.info("shard %d of %d: %d recording(s), %d from the cache", group.rank, group.world_size, len(shard), reused)
    timing = {"setup_seconds": round(loaded - start, 3), "wall_seconds": round(time.perf_counter() - loaded, 3)}
    return work, _shard_summary(local, sources, results, keys, cache, reused, work.timer) | timing


def _assemble(
    config: PrepConfig, work: PrepWork, sources: Sources, summaries: list[dict[str, Any]], cache: FileCache, group: ProcessGroup
) -> PrepOutcome:
    """The main process: the corpus and QC report from every shard's cache entries; its outcome to the others."""
    error, report = None, None
    try:
        for other in summaries[1:]:  # the report's stage times cover every shard
            for stage, seconds in other["stage_seconds"].items():
                work.timer.seconds[stage] += seconds
        extra = {"files_from_cache": sum(s["files_from_cache"] for s in summaries), "processes": group.world_size,
                 "shards": [{k: v for k, v in s.items() if k not in ("entries", "failed")} for s in summaries]}
        outcome = write_outputs(config, work, sources, _gather_results(sources, summaries, cache), extra)
        report = outcome.report
        return outcome
    except BaseException as exc:  # an interrupt too: the others must not report a corpus that was never written
        error = exc if isinstance(exc, Dia2Error) else ShardError(f"the main process failed: {type(exc).__name__}: {exc}")
        raise
    finally:
        group.broadcast((error, report))


def _own_devices(config: PrepConfig, group: ProcessGroup) -> PrepConfig:
    """The config with this process's own GPU for Mimi and Whisper, and its share of the CPU cores."""
    return replace(
        config,
        model=replace(config.model, device=group.own_device(config.model.device)),
        asr=replace(config.asr, asr_device=group.own_device(config.asr.asr_device)),
        run=replace(config.run, threads=config.run.threads or cpu_share()),
    )


def _shard_summary(
    config: PrepConfig, sources: Sources, results: list[FileResult], keys: list[str], cache: FileCache, reused: int,
    timer: StageTimer,
) -> dict[str, Any]:
    """What the main process needs from a shard: cache keys, failures (not cached), and the shard's figures."""
    return {
        "device": str(resolve_device(config.model.device)), "asr_device": str(resolve_device(config.asr.asr_device)),
        "files": len(results), "files_from_cache": reused, "utterances": sum(len(r.rows) for r in results),
        "audio_seconds": round(sum(r.seconds for r in results), 3),
        "stage_seconds": timer.totals(),
        "entries": {r.source: key for r, key in zip(results, keys) if key in cache},
        "failed": {r.source: [s.to_dict() for s in r.skips] for r, key in zip(results, keys) if key not in cache},
    }


def _listing_digest(sources: Sources) -> str:
    """A short digest of the recordings this process lists (names and sizes): equal on every process
    that sees the same input."""
    listing = json.dumps([[f.name, _size(f.path)] for f in sources.files])
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


def _gather_results(sources: Sources, summaries: list[dict[str, Any]], cache: FileCache) -> list[FileResult]:
    """Every recording's result in sorted order, as a single process would hold them."""
    keys = {name: (s["rank"], key) for s in summaries for name, key in s["entries"].items()}
    failed = {name: skips for s in summaries for name, skips in s["failed"].items()}
    results = []
    for source in sources.files:
        if source.name in failed:
            results.append(FileResult(source.name, skips=[Skip(**skip) for skip in failed[source.name]]))
            continue
        rank, key = keys[source.name]
        result = cache.load(key)
        if result is None:
            raise ShardError(
                f"{source.name}, prepared by shard {rank}, is not in {cache.folder}: is the output folder on a filesystem "
                "every node sees? Run the same command again to prepare it"
            )
        results.append(result)
    return results


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # reported as unreadable when its shard gets to it
        return 0
