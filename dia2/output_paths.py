"""Where a command will write, checked before it loads anything: an output that cannot be written
is refused in a second, not after minutes of loading or generating."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from dia2.errors import Dia2Error


class OutputPathError(Dia2Error, OSError):
    """An output file or folder that cannot be written; the message names it and why."""


def check_writable(path: str | os.PathLike, what: str, *, folder: bool = False) -> None:
    """Refuse `path` (a file to write, or with `folder` a folder to write into, either created if
    missing) when it cannot be written: a file in the way of a folder (or the other way round),
    or a folder this process may not write to. `what` names the option, e.g. "--timestamps".
    Nothing is created: the check writes an unnamed temporary file only."""
    path = Path(path)
    if path.exists():
        if path.is_dir() != folder:
            kind = "a folder" if path.is_dir() else "a file"
            raise OutputPathError(f"{what} {path} cannot be written: it is {kind}; give {'a folder' if folder else 'a file name'}")
        if not folder:
            if not os.access(path, os.W_OK):
                raise OutputPathError(f"{what} {path} cannot be written: the file is read-only")
            return
    # The folder the first new file or folder goes into: the output folder itself, or the nearest
    # existing folder above the output (the folders between are made when it is written).
    existing = path if path.exists() else next(p for p in path.parents if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        raise OutputPathError(f"{what} {path} cannot be written: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise OutputPathError(f"{what} {path} cannot be written: {existing} does not accept new files ({exc.strerror})") from None
