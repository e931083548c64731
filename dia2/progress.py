"""Progress of a long command, on a terminal, in a log, and as a record a program reads.

On a terminal `progress_bar` is a tqdm bar. Written to a file or a pipe (a log, a job's output)
it is `LineProgress`: plain lines, one when the work starts, one every `interval` seconds while it
runs (also when no unit finishes for that long: a heartbeat), one per note, one at the end; so
a command never goes silent in a log, and a log holds no carriage-return animation.

For a program that watches a command (the studio's Adapt tab), the command also keeps a
`ProgressRecord` in a file of its output folder (`ProgressFile`, rewritten whole at each change):
its `Phase`, units done of the total, the time left. Data prep and the trainer write it through
this one class and the studio reads it through `read_progress`, so writer and reader cannot
disagree on a field or a phase; where the file is, its owner says (the command's check-only run,
`dia2.console.check_only`, names it).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TextIO

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 30.0
"""How often a log gets a progress line while the work runs."""


def progress_bar(total: int | None, desc: str, unit: str, *, initial: int = 0, file: TextIO | None = None,
                 interval: float = HEARTBEAT_SECONDS, disable: bool = False) -> Any:
    """A tqdm bar on a terminal, else a `LineProgress` (same methods: update, n, total,
    set_postfix, set_postfix_str, set_description_str, write, close; a context manager).
    `initial`: units already done (a resumed run)."""
    file = file or sys.stderr
    if disable or file.isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=file, disable=disable)
    return LineProgress(total, desc, unit, initial=initial, file=file, interval=interval)


class LineProgress:
    """Progress as plain lines (see the module docstring); thread-safe."""

    def __init__(self, total: int | None, desc: str, unit: str, *, initial: int = 0, file: TextIO,
                 interval: float = HEARTBEAT_SECONDS) -> None:
        self.total, self.desc, self.unit, self.file, self.interval = total, desc, unit, file, interval
        self.n, self.postfix, self._initial = initial, "", initial
        self.started = time.monotonic()
        self._lock, self._done = threading.Lock(), threading.Event()
        self.write(self.status())
        self._beat = threading.Thread(target=self._heartbeat, name=f"progress: {desc}", daemon=True)
        self._beat.start()

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.n += n

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_description_str(self, desc: str) -> None:
        self.desc = desc

    def write(self, text: str) -> None:
        with self._lock:
            try:
                print(text, file=self.file, flush=True)
            except ValueError:  # the file was closed under a bar nobody closed: the heartbeat stops
                self._done.set()

    def status(self) -> str:
        """The progress line: done/total (percent), elapsed, time left at the rate so far, postfix."""
        elapsed = time.monotonic() - self.started
        parts = [f"{self.n}/{self.total} {self.unit}s ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n} {self.unit}s"]
        parts.append(f"{_clock(elapsed)} elapsed")
        if self.total and self._initial < self.n < self.total:
            parts.append(f"about {_clock(elapsed / (self.n - self._initial) * (self.total - self.n))} left")
        if self.postfix:
            parts.append(self.postfix)
        return f"{self.desc}: {', '.join(parts)}"

    def close(self) -> None:
        if not self._done.is_set():
            self._done.set()
            self._beat.join()
            self.write(self.status() + (" - done" if self.total is None or self.n >= self.total else ""))

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _heartbeat(self) -> None:
        while not self._done.wait(self.interval):
            self.write(self.status())


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


PROGRESS_FILE = "progress.json"
"""The name a command gives its progress record, in its output folder (the trainer's run folder,
data prep's corpus folder)."""


class Phase(StrEnum):
    """What a command is doing, as its progress record says. Before its first record a command
    is loading (its models, its corpus)."""

    PREPARING = "preparing"
    """data prep: preparing recordings (done of total)."""
    WRITING = "writing"
    """data prep: writing the corpus, its meta and QC report."""
    TRAINING = "training"
    """the trainer: taking optimizer steps (done of total)."""
    EVALUATING = "evaluating"
    """the trainer: the held-out loss and sample scripts at step `done`."""
    SAVING = "saving"
    """the trainer: a checkpoint, or at the last step the trained adapter."""
    DONE = "done"
    """everything is written; the command is exiting."""


@dataclass(frozen=True)
class ProgressRecord:
    """One state of a command: its phase, `done` of `total` units (`unit`: "recording", "step"),
    the seconds left at the pace so far (None when unknown), when the command started writing
    records and when this one was written (seconds since the epoch)."""

    phase: Phase
    done: int
    total: int
    unit: str
    eta_s: float | None
    started: float
    time: float

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ProgressRecord:
        """The record a progress file holds; ValueError (KeyError, TypeError) for one that is not."""
        return cls(Phase(raw["phase"]), int(raw["done"]), int(raw["total"]), str(raw["unit"]),
                   None if raw["eta_s"] is None else float(raw["eta_s"]), float(raw["started"]), float(raw["time"]))


class ProgressFile:
    """A command's progress record at `path`, rewritten whole at each change (a reader sees the
    last record whole, never half of one). `enabled`: False on every process but a launch's main one."""

    def __init__(self, path: Path, unit: str, enabled: bool = True) -> None:
        self.path, self.unit, self.enabled = Path(path), unit, enabled
        self.started = time.time()

    def write(self, phase: Phase, done: int, total: int, eta_s: float | None = None) -> None:
        if not self.enabled:
            return
        record = ProgressRecord(Phase(phase), done, total, self.unit, eta_s, self.started, time.time())
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(asdict(record)) + "\n", encoding="utf-8")
        os.replace(temporary, self.path)


def read_progress(path: str | os.PathLike, since: float = 0.0) -> ProgressRecord | None:
    """The progress record at `path`; None before the command writes one, and for a record left by
    an earlier run (started before `since`, e.g. when a job was started)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    try:
        record = ProgressRecord.from_dict(raw)
    except (KeyError, TypeError, ValueError) as exc:
        logger.warning("%s is not a progress record (%s: %s)", path, type(exc).__name__, exc)
        return None
    return record if record.started >= since else None
