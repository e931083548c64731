"""Progress of a long command, on a terminal or in a log.

On a terminal `progress_bar` is a tqdm bar. Written to a file or a pipe (a log, a job's output)
it is `LineProgress`: plain lines, one when the work starts, one every `interval` seconds while it
runs (also when no unit finishes for that long: a heartbeat), one per note, one at the end; so
a command never goes silent in a log, and a log holds no carriage-return animation.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

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
            print(text, file=self.file, flush=True)

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
