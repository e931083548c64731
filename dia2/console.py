"""What every entry point does with the console, the same way: logging, and stops.

- Under a launcher (accelerate launch, torchrun: RANK set) only the main process logs below
  ERROR, so N processes do not print every line N times; errors come from every process.
- Ctrl-C and SIGTERM stop a command the same way (`sigterm_stops_like_ctrl_c` turns SIGTERM
  into `Terminated`, a KeyboardInterrupt); the entry point reports the stop in one line
  (`stop_line`) and exits with the shell's code for the signal (`stop_code`).
- A check-only run (`--check`, `check_only`): the command refuses what a real run would refuse
  before it loads anything, writes nothing, and prints one JSON line naming the files the run
  will write (exit 0), or its one-line error (exit 2). A program that drives the command (the
  studio) runs the same command line with `--check` first and keeps what it prints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from dia2.errors import Dia2Error

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
CHECK_FLAG = "--check"
CHECK_HELP = ("check the command line and every input as a run would, then stop, writing nothing: print one JSON "
              "line naming the files the run will write ({\"writes\": {role: path}, ...}) and exit 0, or the error "
              "and exit 2")
REFUSED = 2
"""The exit code of a check-only run that refuses its command line (argparse's too)."""


def is_main_process() -> bool:
    """Whether this is the main process of a launch (or there is no launcher)."""
    return int(os.environ.get("RANK", "0")) == 0


def setup_logging(level: int, loggers: Mapping[str, int] | None = None) -> None:
    """Log at `level` to stderr (`loggers`: levels of particular loggers, e.g. {"finetune": INFO});
    on a launch's other processes, errors only, and no Python warnings (the main one shows them)."""
    if not is_main_process():
        logging.basicConfig(level=logging.ERROR, format=f"[rank {os.environ['RANK']}] {LOG_FORMAT}")
        warnings.filterwarnings("ignore")
        return
    logging.basicConfig(level=level, format=LOG_FORMAT)
    for name, named_level in (loggers or {}).items():
        logging.getLogger(name).setLevel(named_level)


def say(line: str) -> None:
    """Tell the user `line` on stderr as it is, not as a log record (no WARNING in front of a note)."""
    print(line, file=sys.stderr)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt, so both stop a command the same way."""


@contextlib.contextmanager
def sigterm_stops_like_ctrl_c() -> Iterator[None]:
    def stop(signum: int, frame: Any) -> None:
        raise Terminated

    if threading.current_thread() is not threading.main_thread():
        yield  # Python delivers signals to the main thread only; its handler stays in charge
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_line(prog: str, stop: KeyboardInterrupt, what_now: str) -> str:
    """The one line that reports a stop: `prog: stopped by Ctrl-C: what_now`."""
    return f"{prog}: stopped by {'SIGTERM' if isinstance(stop, Terminated) else 'Ctrl-C'}: {what_now}"


def stop_code(stop: KeyboardInterrupt) -> int:
    """The exit code of a command stopped by `stop`, as a shell reports a signal: 128 + its number."""
    return 128 + int(signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)


def check_only(prog: str, check: Callable[[], Mapping[str, Any]]) -> int:
    """A check-only run: `check()` raises a Dia2Error for a refusal, else returns what the run
    will do ({"writes": {role: path}, facts...}), printed as one JSON line on stdout. Returns
    the exit code (0, or REFUSED with `prog: error: message` on stderr)."""
    try:
        result = check()
    except Dia2Error as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return REFUSED
    print(json.dumps(result, default=str), flush=True)
    return 0
