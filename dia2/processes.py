"""Processes of this machine: whether one is alive, for files that record the pid that holds them
(a voice folder's writer lock, a studio job's runner)."""

from __future__ import annotations

import os


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (someone else's process counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
