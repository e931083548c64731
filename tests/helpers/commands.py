"""Many commands through one child process (tests/child/run_commands.py): each runs as
`python -m MODULE ARGS` would, with the child's environment (`tests.conftest.child_env`), but the
child starts Python and imports torch once for all of them (some 2 s each on these machines)."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import threading
from pathlib import Path

from tests.conftest import CHILD_SITE


class CommandChild:
    """One child running commands in turn (calls from several threads wait for each other);
    `run` returns what `subprocess.run` would."""

    def __init__(self, env: dict[str, str], timeout: float = 120.0) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self.proc = subprocess.Popen([sys.executable, str(CHILD_SITE / "run_commands.py")], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run(self, module: str, *args: object, cwd: Path) -> subprocess.CompletedProcess:
        request = {"module": module, "args": [str(a) for a in args], "cwd": str(cwd)}
        with self._lock:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
            line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            raise AssertionError(f"python -m {module} gave no answer within {self.timeout:.0f} s in the command child "
                                 f"(its own errors: {self.proc.stderr.read()[-3000:]})")
        reply = json.loads(line)
        return subprocess.CompletedProcess(["python", "-m", module, *request["args"]], reply["returncode"],
                                           reply["stdout"], reply["stderr"])

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
