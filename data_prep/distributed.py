"""Data prep over several processes, GPUs and nodes, on Accelerate / torch.distributed.

    accelerate launch --multi_gpu --num_processes 8 -m data_prep recordings/ corpus/
    torchrun --nproc_per_node 8 -m data_prep recordings/ corpus/

Under a launcher (WORLD_SIZE > 1) every process lists the same sorted recordings and takes the
shard `assign_shards` gives its rank: greedy by file size, so shards are balanced, and the same
input always yields the same shards. Each process prepares its shard on its own device into the
shared cache, then reports on a `ShardBoard`: a folder inside the cache with one file per shard
(done, with its cache keys and figures, or failed, with the error) and a heartbeat per process.
Every process waits on those files, not on a collective, so a shard hours longer than another
never meets the process group's timeout; a failed or silent shard stops the others with its
error. The main process then assembles the corpus from the cache exactly as a single process
does, and one short collective hands its outcome to the others.

The output folder must be one folder that every process sees (on several nodes: a shared
filesystem mounted at the same path), and every process must list the same recordings;
`ShardBoard.open` checks both before any work starts.
A single process (no launcher) never touches any of this.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Self

import torch

from dia2.device import usable_cores
from dia2.errors import Dia2Error

logger = logging.getLogger(__name__)

BOARD_DIR = "shards"
"""The board's folder inside the cache folder; one sub-folder per launch."""
GROUP_TIMEOUT = timedelta(hours=2)
"""Collectives here are short (a run id, a check, the final outcome), but the last one waits
while the main process writes the corpus, which takes minutes for hundreds of hours."""
HEARTBEAT_SECONDS = 5.0
LAUNCHER_CHECK_SECONDS = 0.2
STALE_SECONDS = 600.0
"""A process whose heartbeat has not changed for this long is taken for dead (a node lost, a
process killed without its launcher noticing)."""
SHARED_CHECK_SECONDS = 30.0
"""How long a process looks for the main process's token file (network filesystems cache
directory listings for a few seconds)."""


class ShardError(Dia2Error, RuntimeError):
    """Another process of the run failed or vanished; the message names it and how to resume."""


class SharedFolderError(Dia2Error, OSError):
    """Some processes do not see the files others write in the output folder."""


def launched_world_size() -> int:
    """How many processes the launcher (accelerate launch, torchrun) started; 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's rank among them; 0 without a launcher."""
    return int(os.environ.get("RANK", "0"))


def cpu_share() -> int:
    """CPU threads for one process: the cores divided among the processes of this node."""
    return max(1, usable_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the run, from Accelerate's PartialState (which owns the torch.distributed group)."""

    rank: int
    world_size: int
    device: torch.device  # this process's own device: cuda:LOCAL_RANK on GPUs, else cpu

    @classmethod
    def join(cls) -> ProcessGroup:
        """Join the launcher's process group (gloo on CPU, nccl on GPUs); idempotent."""
        from accelerate import PartialState

        # Without CUDA, Accelerate joins the launched processes (over gloo) only when told it runs on the CPU.
        state = PartialState(cpu=not torch.cuda.is_available(), timeout=GROUP_TIMEOUT)
        return cls(state.process_index, state.num_processes, state.device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, value: Any) -> Any:
        """The main process's `value`, in every process."""
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every process's `value`, by rank, in every process."""
        values: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(values, value)
        return values

    def own_device(self, requested: str) -> str:
        """`requested` (auto, cuda, cpu, cuda:1 ...) made this process's own: auto and cuda mean
        cuda:LOCAL_RANK when the group runs on GPUs; anything else is kept as given."""
        if requested in ("auto", "cuda") and self.device.type == "cuda":
            return str(self.device)
        return requested


def release_group() -> None:
    """Leave the process group, if this process joined one (the CLI's last step)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        from accelerate import PartialState

        PartialState().destroy_process_group()


def assign_shards(sizes: Sequence[int], world_size: int) -> list[list[int]]:
    """Indices of the recordings each rank prepares, given their sizes in bytes (in sorted-name order).

    Largest first, each to the rank with the least bytes so far (the lowest rank on a tie): the
    longest-processing-time rule, within 4/3 of the best balance. Only sizes and positions
    decide, so every process, and every relaunch on the same input, computes the same shards.
    Each shard lists its recordings in their sorted order.
    """
    loads = [0] * world_size
    shards: list[list[int]] = [[] for _ in range(world_size)]
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        shards[rank].append(index)
        loads[rank] += sizes[index]
    return [sorted(shard) for shard in shards]


class ShardBoard:
    """Where the shards of one launch report: `<cache>/shards/<run id>/` on the shared folder.

    rank-<r>.alive: a counter the process's heartbeat thread rewrites every few seconds;
    rank-<r>.done.json: the shard's summary (cache key per recording, failures, figures);
    rank-<r>.failed.json: the error that stopped the shard.
    """

    def __init__(self, folder: Path, group: ProcessGroup, stale_seconds: float = STALE_SECONDS) -> None:
        self.folder, self.group, self.stale_seconds = folder, group, stale_seconds
        self.host = socket.gethostname()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    @classmethod
    def open(cls, cache_folder: Path, group: ProcessGroup, inputs: str) -> ShardBoard:
        """The board of a new launch; SharedFolderError when a process cannot see the main process's
        files, ShardError when the processes listed different recordings (`inputs`: a digest of
        this process's listing), both before any work starts.

        The main process clears the boards of earlier launches (their cache entries stay, and are
        reused) and writes the new board's token; every process must then find that token.
        """
        root = cache_folder / BOARD_DIR
        run_id = None
        if group.is_main:
            shutil.rmtree(root, ignore_errors=True)
            run_id = uuid.uuid4().hex[:12]
            (root / run_id).mkdir(parents=True)
            _write_json(root / run_id / "token.json", {"host": socket.gethostname()})
        run_id = group.broadcast(run_id)
        board = cls(root / run_id, group)
        seen = board._find(board.folder / "token.json", SHARED_CHECK_SECONDS)
        views = group.gather((seen, board.host, inputs))
        blind = [(r, host) for r, (ok, host, _) in enumerate(views) if not ok]
        if blind:
            names = ", ".join(f"rank {r} on {host}" for r, host in blind)
            raise SharedFolderError(
                f"the output folder {cache_folder.parent} is not shared by every process: {names} cannot see the files "
                f"rank 0 writes there; put the output folder on a filesystem every node mounts at the same path "
                "(NFS, Lustre, a cloud file share ...)"
            )
        if len({listed for _, _, listed in views}) > 1:
            ranks = ", ".join(f"shard {r} on {host}: {listed}" for r, (_, host, listed) in enumerate(views))
            raise ShardError(
                f"the processes listed different recordings ({ranks}): every node must see the same input at the same "
                "path, unchanged while the run starts; run again once it does"
            )
        return board

    def _find(self, path: Path, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not path.is_file():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def __enter__(self) -> Self:
        """Start the heartbeat: a daemon thread that rewrites rank-<r>.alive every few seconds
        and watches the launcher, until the block ends."""
        self._beat = threading.Thread(target=self._beat_loop, args=(os.getppid(),), name="dia2-prep-heartbeat", daemon=True)
        self._beat.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()

    def _beat_loop(self, launcher: int) -> None:
        count, next_beat = 0, 0.0
        while not self._stop.is_set():
            if os.getppid() != launcher:
                # The launcher was killed (SIGKILL gives it no time to stop its workers, which
                # torchrun starts in sessions of their own): stop, rather than race the relaunch.
                self.failed(ShardError(f"its launcher (pid {launcher}) is gone"))
                logger.error("shard %d: the launcher (pid %d) is gone; stopping", self.group.rank, launcher)
                os._exit(1)
            if time.monotonic() >= next_beat:
                _write_json(self._path("alive"), {"beat": count, "pid": os.getpid(), "host": self.host})
                count, next_beat = count + 1, time.monotonic() + HEARTBEAT_SECONDS
            self._stop.wait(LAUNCHER_CHECK_SECONDS)

    def done(self, summary: dict[str, Any]) -> None:
        """Report this shard finished: `summary` must be JSON (cache keys, failures, figures)."""
        _write_json(self._path("done.json"), {"rank": self.group.rank, "host": self.host, **summary})

    def failed(self, exc: BaseException) -> None:
        """Report what stopped this shard, so the other processes stop with it."""
        _write_json(self._path("failed.json"), {"rank": self.group.rank, "host": self.host, "error": f"{type(exc).__name__}: {exc}"})

    def wait_for_all(self, poll_seconds: float = 0.5) -> list[dict[str, Any]]:
        """Every shard's summary, by rank, once all are done; ShardError when one failed or went silent."""
        beats: dict[int, tuple[Any, float]] = {}
        while True:
            summaries: list[dict[str, Any] | None] = []
            for rank in range(self.group.world_size):
                failed = self._read(rank, "failed.json")
                if failed is not None:
                    raise ShardError(
                        f"the process of shard {rank} (on {failed['host']}) failed: {failed['error']}; fix that and run the "
                        "same command again: every recording already prepared is reused"
                    )
                summaries.append(self._read(rank, "done.json"))
            if all(s is not None for s in summaries):
                return summaries  # type: ignore[return-value]
            now = time.monotonic()
            for rank, summary in enumerate(summaries):
                if summary is None:
                    self._check_alive(rank, beats, now)
            time.sleep(poll_seconds)

    def _check_alive(self, rank: int, beats: dict[int, tuple[Any, float]], now: float) -> None:
        # Compared by content on this node's clock: nodes' clocks and a shared filesystem's
        # timestamps need not agree.
        beat = self._read(rank, "alive")
        if rank not in beats or beats[rank][0] != beat:
            beats[rank] = (beat, now)
        elif now - beats[rank][1] > self.stale_seconds:
            where = f" (pid {beat['pid']} on {beat['host']})" if beat else ""
            raise ShardError(
                f"the process of shard {rank}{where} has given no sign of life for {self.stale_seconds:.0f} s: it died or "
                "hangs; stop the run and launch the same command again: every recording already prepared is reused"
            )

    def _path(self, kind: str, rank: int | None = None) -> Path:
        return self.folder / f"rank-{self.group.rank if rank is None else rank}.{kind}"

    def _read(self, rank: int, kind: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(kind, rank).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None


def _write_json(path: Path, value: dict[str, Any]) -> None:
    """Write atomically (temp name, then rename), so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    tmp.write_text(json.dumps(value, indent=1), encoding="utf-8")
    os.replace(tmp, path)
