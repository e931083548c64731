"""A child process that runs commands one after another, each as `python -m MODULE ARGS...` would
run it, so that many cases pay one Python and torch start-up (`tests.helpers.commands.CommandChild`).

Each request is a JSON line on the stdin this process started with, {"module", "args", "cwd"};
each reply a JSON line on the stdout it started with, {"returncode", "stdout", "stderr"}; a
command's own stdin is empty (/dev/null). A command's output is taken
at the file descriptors, so whatever holds sys.stderr (a log handler set up by an earlier case)
writes into its own case's output; warnings shown once per process are shown again for each case.
Started with `tests.conftest.child_env`, so tests/child/sitecustomize.py blocks imports as asked.
"""

import json
import os
import runpy
import sys
import tempfile
import traceback
import warnings


def run(module: str, args: list[str]) -> int:
    """`python -m module args`: its exit code, a traceback on stderr for an uncaught exception."""
    sys.argv = [module, *args]
    try:
        with warnings.catch_warnings():  # a fresh process shows every "once" warning again
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - the interpreter's own behaviour: print it, exit 1
        traceback.print_exc()
        return 1
    return 0


def captured(case: dict) -> dict:
    """Run one case with fds 1 and 2 on temporary files; its reply."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            os.chdir(case["cwd"])
            code = run(case["module"], case["args"])
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        texts = []
        for f in (out, err):
            f.seek(0)
            texts.append(f.read().decode("utf-8", errors="replace"))
    return {"returncode": code, "stdout": texts[0], "stderr": texts[1]}


def main() -> None:
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    empty = os.open(os.devnull, os.O_RDONLY)
    os.dup2(empty, 0)
    os.close(empty)
    for line in requests:
        replies.write(json.dumps(captured(json.loads(line))) + "\n")
        replies.flush()


if __name__ == "__main__":
    main()
