"""The `main` of every command, one shape: parse and check the options, set up logging (and stops),
run, and turn an error a user can fix into one line.

    def main(argv=None):
        parser = build_parser()
        return run_main("dia2-infer", lambda: parse_options(parser, argv), speak, parser=parser)

Imports nothing but the standard library and dia2's console and errors: `finetune.push` runs it
without torch.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Mapping
from typing import TypeVar

from dia2.console import is_main_process, setup_logging, sigterm_stops_like_ctrl_c, stop_code, stop_line
from dia2.errors import Dia2Error, report
from dia2.options import OptionError

Options = TypeVar("Options")


def run_main(
    prog: str,
    parse: Callable[[], Options],
    run: Callable[[Options], int],
    *,
    parser: argparse.ArgumentParser | None = None,
    log_level: int | Callable[[Options], int] = logging.WARNING,
    loggers: Mapping[str, int] | None = None,
    errors: tuple[type[BaseException], ...] = (Dia2Error,),
    stopped: Callable[[Options | None], str] | None = None,
) -> int:
    """Run a command; its exit code.

    parse: the checked options. An OptionError it raises is answered by `parser`'s usage and exit
    code 2 when the command has a flag parser, else reported like any other error.
    run: the work, given the options; returns the exit code.
    log_level: the console's level (or how the options choose it); `loggers`: particular loggers'.
    errors: what `run` may raise that is reported as `prog: error: message` with exit code 1.
    stopped: for a command that stops cleanly on Ctrl-C or SIGTERM, what to do now (given the
    options, None when the stop came while parsing), said in one line with the signal's exit code;
    without it a stop raises KeyboardInterrupt as Python does.
    """
    options = None
    try:
        try:
            options = parse()
        except OptionError as exc:
            if parser is None:
                raise
            parser.error(str(exc))
        setup_logging(log_level(options) if callable(log_level) else log_level, loggers)
        with sigterm_stops_like_ctrl_c() if stopped is not None else contextlib.nullcontext():
            return run(options)
    except errors as exc:
        return report(prog, exc)
    except KeyboardInterrupt as stop:
        if stopped is None:
            raise
        if is_main_process():  # one message for all processes of a launch
            # On a fresh line: a progress bar may hold the current one.
            print("\n" + stop_line(prog, stop, stopped(options)), file=sys.stderr)
        return stop_code(stop)
