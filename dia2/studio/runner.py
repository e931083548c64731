"""Runs one studio job and records how it ended: `python runner.py JOB_FOLDER`.

The studio starts this file by its path (not `-m dia2.studio.runner`), so it imports the standard
library only: importing the dia2 package would load torch, seconds of start-up and hundreds of
MB for a process that only waits. It starts the job's command (job.json "argv"), its output going
to log.txt, passes SIGTERM on to it (a cancel), and writes exit.json (return code, whether it was
cancelled, when it ended) under a temporary name renamed into place: whoever reads the folder,
this studio or one started later, sees either no result or a whole one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SPEC, LOG, EXIT = "job.json", "log.txt", "exit.json"
CANCEL = "cancel.json"
"""A cancel was asked for: a runner killed before it could say so still ends as cancelled, and one
asked before it started its command never starts it."""


def run(folder: Path) -> int:
    """Run the job in `folder` to its end; returns its exit code."""
    spec = json.loads((folder / SPEC).read_text())
    env = {**os.environ, **spec.get("env", {})}
    cancelled = False
    child: subprocess.Popen | None = None

    def cancel(signum: int, frame: object) -> None:
        nonlocal cancelled
        cancelled = True
        if child is not None:
            child.send_signal(signal.SIGTERM)  # the trainer stops like Ctrl-C and keeps its last checkpoint

    signal.signal(signal.SIGTERM, cancel)
    if (folder / CANCEL).exists():  # cancelled while the studio was still starting this runner
        cancelled, code = True, -int(signal.SIGTERM)
    else:
        with open(folder / LOG, "ab") as log:
            child = subprocess.Popen(spec["argv"], cwd=spec.get("cwd"), env=env, stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if cancelled:  # asked to stop while the command was starting
            child.send_signal(signal.SIGTERM)
        code = child.wait()
    record = {"returncode": code, "cancelled": cancelled, "ended": time.time()}
    temporary = folder / f".{EXIT}.{os.getpid()}"
    temporary.write_text(json.dumps(record) + "\n")
    os.replace(temporary, folder / EXIT)
    return code


if __name__ == "__main__":
    sys.exit(0 if run(Path(sys.argv[1])) == 0 else 1)
