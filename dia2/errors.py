"""The one base of every error a user can cause (a bad file, flag, config key, script, corpus,
adapter...). Each entry point (CLI, trainer, server, studio) catches `Dia2Error` alone and turns
it into one message: a console line and a non-zero exit, an error JSON, a note in the page.

Subclasses keep a builtin base too (`ValueError`, `OSError`, ...) so callers that catch those
keep working.
"""

from __future__ import annotations

import sys


class Dia2Error(Exception):
    """An error a user can fix; its message names the input and the fix."""


class PushError(Dia2Error, RuntimeError):
    """A Hub upload (a corpus, a trained voice) that cannot go ahead or failed; the message says
    what is kept and what to do."""


def report(prog: str, exc: BaseException) -> int:
    """Print `prog: error: message` on stderr (one line per message line) and return exit code 1."""
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return 1
