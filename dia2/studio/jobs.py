"""Background jobs of the studio (data prep, training): child processes whose state lives on disk.

Each job is a folder under `<work>/jobs/<id>/`:

    job.json     what runs (argv, cwd, env), its kind, title and details (output folder, steps),
                 when it started and the pid of its runner; written whole (temp name, then rename)
    log.txt      everything the command printed (progress bars included)
    exit.json    how it ended (return code, cancelled), written by the runner when it ends
    handled.json that the studio has acted on its end (e.g. added the trained adapter), with a note

A job runs under `runner.py`, in its own session, so it outlives the page that started it and
the studio itself: a page reload, or a studio started again on the same work folder (by any
spelling of its path), finds every job with its progress and result. Cancelling sends SIGTERM,
which the runner passes on (the trainer stops like Ctrl-C and keeps its last checkpoint; data
prep keeps what it cached). A folder whose job.json cannot be read is listed as damaged.

Before a job starts, `check_command` runs its command line as a check-only run (`--check`,
`dia2.console.check_only`): the command refuses a bad input in its own words, before a job
exists, and names the files the run will write (its progress record among them), which the
studio keeps in the job's details and reads while it runs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dia2.console import CHECK_FLAG, REFUSED
from dia2.errors import Dia2Error
from dia2.processes import process_alive
from dia2.studio.runner import CANCEL, EXIT, LOG, SPEC

try:
    import fcntl
except ImportError:  # not POSIX: starting jobs is serialised within this studio only
    fcntl = None

logger = logging.getLogger(__name__)

HANDLED = "handled.json"
RUNNER = Path(__file__).with_name("runner.py")
STARTING_GRACE_S = 60.0
"""A job with no runner pid yet is starting (its runner is being spawned) for this long; after it,
the studio that started it stopped before it could record one, and the job counts as failed."""
Status = Literal["running", "done", "failed", "cancelled", "damaged"]
CHECK_TIMEOUT_S = 120.0
"""How long a check-only run may take (it imports the command's modules and looks at its inputs)."""
_ERROR_LINE = re.compile(r"^\S+: error: (.*)$")


class JobError(Dia2Error, ValueError):
    """A job that does not exist or cannot be cancelled; the message says which and why."""


class CheckRefused(JobError):
    """A command's check-only run refused its command line; the message is the command's own."""


@dataclass(frozen=True)
class Job:
    """One job as its folder describes it now."""

    id: str
    kind: str
    title: str
    status: Status
    started: float
    folder: Path
    details: dict[str, Any] = field(default_factory=dict)
    returncode: int | None = None
    ended: float | None = None
    note: str = ""
    """What the studio did when the job ended (or why the job failed)."""
    handled: bool = False
    """Whether the studio has acted on the job's end (its note is then final)."""

    @property
    def log(self) -> Path:
        return self.folder / LOG

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the job's output, progress-bar redraws (carriage returns) resolved to their last state."""
        try:
            with open(self.log, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 4 * chars))
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
        # A progress bar redraws its line after a carriage return: keep each line's last drawing.
        lines = [next((p for p in reversed(line.split("\r")) if p.strip()), "") for line in text.split("\n")]
        return "\n".join(lines)[-chars:]


class JobStore:
    """The jobs under `folder`. `on_end(job) -> note` runs once per ended job (in a watcher thread,
    or at start-up for jobs that ended while no studio watched them); its note is kept."""

    def __init__(self, folder: str | os.PathLike, on_end: Callable[[Job], str] | None = None) -> None:
        self.folder = Path(folder).resolve()  # the runner's command line names it; one spelling for every studio
        self.folder.mkdir(parents=True, exist_ok=True)
        self._on_end = on_end
        self._lock = threading.Lock()  # one on_end per job, even when a watcher and a poll race
        self._starting = threading.Lock()
        self._reported: set[str] = set()  # damaged folders already logged (the page lists jobs every second)
        for job in self.list():
            if job.status == "running":
                self._watch(job, None)
            elif job.status != "damaged":
                self._handle(job)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold while checking that no running job writes a folder and starting one that does:
        two clicks (or two studios on one work folder) cannot both pass the check."""
        with self._starting, open(self.folder / ".start.lock", "a") as lock_file:
            if fcntl is not None:
                fcntl.flock(lock_file, fcntl.LOCK_EX)  # released when the file closes
            yield

    def start(self, kind: str, title: str, argv: list[str], *, cwd: str | os.PathLike | None = None,
              env: dict[str, str] | None = None, details: dict[str, Any] | None = None) -> Job:
        """Start `argv` as a background job; returns it, running."""
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{uuid.uuid4().hex[:6]}"
        folder = self.folder / job_id
        folder.mkdir()
        spec = {"id": job_id, "kind": kind, "title": title, "argv": [str(a) for a in argv],
                "cwd": str(cwd) if cwd is not None else None, "env": env or {}, "details": details or {},
                "started": time.time(), "pid": None}
        _write_json(folder / SPEC, spec)
        process = subprocess.Popen([sys.executable, str(RUNNER), str(folder)], start_new_session=True,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _write_json(folder / SPEC, {**spec, "pid": process.pid})
        job = self.get(job_id)
        self._watch(job, process)
        logger.info("job %s started: %s", job_id, " ".join(spec["argv"]))
        return job

    def get(self, job_id: str) -> Job:
        folder = self.folder / job_id
        if not job_id or "/" in job_id or job_id.startswith(".") or not (folder / SPEC).is_file():
            raise JobError(f"no job {job_id!r} in {self.folder}: choose one from the list")
        return _read_job(folder)

    def list(self, kind: str | None = None) -> list[Job]:
        """Every job (of `kind`), newest first; a damaged one (unreadable job.json) as status damaged."""
        jobs = [_read_job(p) for p in sorted(self.folder.iterdir(), reverse=True) if (p / SPEC).is_file()]
        for job in jobs:
            if job.status == "damaged" and job.id not in self._reported:
                self._reported.add(job.id)
                logger.warning("job %s is damaged and listed as such: %s", job.id, job.note)
        return [j for j in jobs if kind is None or j.kind == kind]

    def running(self, kind: str, **details: Any) -> Job | None:
        """A running job of `kind` whose details hold these values (e.g. output="/path"), if any."""
        return next((j for j in self.list(kind) if j.status == "running"
                     and all(j.details.get(k) == v for k, v in details.items())), None)

    def cancel(self, job_id: str) -> Job:
        """Ask a running job to stop (SIGTERM); it ends as cancelled shortly after."""
        job = self.get(job_id)
        if job.status != "running":
            raise JobError(f"job {job_id} is not running (it is {job.status}): nothing to cancel")
        pid = json.loads((job.folder / SPEC).read_text())["pid"]
        _write_json(job.folder / CANCEL, {"at": time.time()})  # a runner still starting reads it and stops
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass  # it ended meanwhile
        return self.get(job_id)

    def wait(self, job_id: str, timeout: float) -> Job:
        """The job once it has ended and been handled (or as it stands after `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.handled or time.monotonic() > deadline:
                return job
            time.sleep(0.2)

    def _watch(self, job: Job, process: subprocess.Popen | None) -> None:
        """Act on the job's end: wait for our own child, or poll a runner a former studio started."""

        def watch() -> None:
            if process is not None:
                process.wait()
            else:
                while self.get(job.id).status == "running":
                    time.sleep(0.5)
            self._handle(self.get(job.id))

        threading.Thread(target=watch, daemon=True, name=f"dia2-job-{job.id}").start()

    def _handle(self, job: Job) -> None:
        with self._lock:
            if (job.folder / HANDLED).exists() or job.status == "running":
                return
            note = job.note
            if self._on_end is not None:
                try:
                    note = self._on_end(job) or note
                except Exception as exc:  # the job's result stays; the page shows why the follow-up failed
                    logger.exception("acting on the end of job %s failed", job.id)
                    note = f"{type(exc).__name__}: {exc}"
            _write_json(job.folder / HANDLED, {"note": note, "at": time.time()})


def check_command(argv: list[Any], *, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `argv` as a check-only run (`argv --check`) and return what it prints: {"writes":
    {role: path}, facts...}. CheckRefused with the command's one-line error when it refuses its
    command line; JobError when it fails in another way (the check could not run)."""
    command = [*map(str, argv), CHECK_FLAG]
    try:
        done = subprocess.run(command, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=CHECK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise JobError(f"checking {shlex.join(command)} took over {CHECK_TIMEOUT_S:.0f} s: is the machine busy? "
                       "Try again") from None
    return check_verdict(done)


def check_verdict(done: subprocess.CompletedProcess) -> dict[str, Any]:
    """What a finished check-only run (`done.args` ending in --check) says: `check_command`'s result,
    CheckRefused or JobError."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [m.group(1) for m in map(_ERROR_LINE.match, lines) if m]
    if done.returncode == REFUSED and errors:
        raise CheckRefused(errors[-1])
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
    except (IndexError, ValueError):
        result = None
    if not isinstance(result, dict) or not isinstance(result.get("writes"), dict):
        said = (errors or lines or [done.stdout.strip() or "nothing"])[-1]
        raise JobError(f"checking {shlex.join(map(str, done.args))} failed (exit code {done.returncode}): {said}")
    return result


def _read_job(folder: Path) -> Job:
    try:
        spec = json.loads((folder / SPEC).read_text())
        return _job(folder, spec)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        # One broken folder (a disk filled up, a hand edit) must not hide every other job.
        return Job(folder.name, "", "damaged job", "damaged", 0.0, folder,
                   note=f"{SPEC} cannot be read ({type(exc).__name__}: {exc}): delete the folder {folder}")


def _job(folder: Path, spec: dict[str, Any]) -> Job:
    ended = _read_optional(folder / EXIT)
    handled = _read_optional(folder / HANDLED)
    note = handled.get("note", "") if handled else ""
    if ended is not None:
        code = ended["returncode"]
        status: Status = "cancelled" if ended["cancelled"] else ("done" if code == 0 else "failed")
        return Job(spec["id"], spec["kind"], spec["title"], status, spec["started"], folder, spec["details"], code,
                   ended["ended"], note, handled is not None)
    starting = spec["pid"] is None and time.time() - spec["started"] < STARTING_GRACE_S
    if (starting and not (folder / CANCEL).exists()) or (spec["pid"] is not None and _runs(spec["pid"], spec["id"])):
        return Job(spec["id"], spec["kind"], spec["title"], "running", spec["started"], folder, spec["details"])
    if (folder / CANCEL).exists():
        return Job(spec["id"], spec["kind"], spec["title"], "cancelled", spec["started"], folder, spec["details"],
                   note=note, handled=handled is not None)
    return Job(spec["id"], spec["kind"], spec["title"], "failed", spec["started"], folder, spec["details"],
               note=note or "the job's process ended without recording a result (was it killed?)",
               handled=handled is not None)


def _runs(pid: int, job_id: str) -> bool:
    """Whether `pid` is alive and is this job's runner (a reused pid would name another command).
    Matched on the job id, the last part of the runner's folder argument, not on the folder's
    spelling: a studio started again with another spelling of --work still finds its runners."""
    if not process_alive(pid):
        return False
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
        if not command:
            # Empty while the runner is between fork and exec (measured right after Popen), and for
            # a zombie: only the zombie (state Z, after the ')' that ends the command name) has ended.
            return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True  # no /proc (not Linux): trust the pid
    return any(Path(os.fsdecode(part)).name == job_id for part in command.split(b"\0")[1:] if part)


def _read_optional(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write whole or not at all: a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    temporary.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(temporary, path)
