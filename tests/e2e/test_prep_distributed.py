"""Data prep over two processes (gloo on CPU) through the real launchers.

The corpus a launch of two processes writes over tests/fixtures/prep must equal, row for row
and split for split, the corpus one process writes; a launch killed once some recordings are
cached, then launched again, reuses exactly those and still writes that corpus; the QC report
covers every shard. The shard plan and the board the shards report on are checked in-process.
"""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch

from data_prep import distributed, shards
from data_prep.cache import CACHE_DIR
from data_prep.config import PrepConfig
from data_prep.distributed import (
    ProcessGroup,
    ShardBoard,
    ShardError,
    SharedFolderError,
    assign_shards,
)
from data_prep.sources import SourceFile, Sources
from data_prep.timing import StageTimer
from dia2.data.corpus import row_codes
from tests.conftest import PREP_FIXTURES, PREP_SPEAKER_MAP, REPO_ROOT

FIXTURES = PREP_FIXTURES
RECORDINGS = sorted(PREP_SPEAKER_MAP)
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def single(prepared_fixtures):
    """The corpus of one plain process (no launcher), with the options the launches use: the
    session's data prep over the fixtures (`prepared_fixtures`)."""
    return prepared_fixtures[0]


def launch(launcher: list[str], out: Path, tiny_bundle_dir: Path, tiny_en: str, speaker_map: Path) -> subprocess.Popen:
    """`<launcher> -m data_prep ...` with the options of `single`."""
    args = [FIXTURES, out, "--model", tiny_bundle_dir, "--asr-model", tiny_en, "--speaker-map", speaker_map, "--threads", "1", "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MASTER_PORT": str(_free_port())}
    return subprocess.Popen([*launcher, "-m", "data_prep", *map(str, args)], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def torchrun() -> list[str]:
    return [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(_free_port())]


def accelerate_launch() -> list[str]:
    return [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_gone(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(_alive(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # an unreaped zombie has stopped


def cached_entries(out: Path) -> list[Path]:
    return list((out / CACHE_DIR).glob("*.json"))


def assert_same_corpus(got_folder: Path, want_folder: Path) -> None:
    got, want = datasets.load_from_disk(str(got_folder)), datasets.load_from_disk(str(want_folder))
    assert set(got) == set(want) == {"train", "validation"}
    for split in want:
        got_rows, want_rows = list(got[split]), list(want[split])
        assert [r["source_file"] for r in got_rows] == [r["source_file"] for r in want_rows], split
        for g, w in zip(got_rows, want_rows):
            assert torch.equal(row_codes(g), row_codes(w))
            assert {k: v for k, v in g.items() if k != "codes"} == {k: v for k, v in w.items() if k != "codes"}


def assert_report_covers_every_shard(out: Path, reused: int) -> dict:
    report = json.loads((out / "qc_report.json").read_text())
    assert report["processes"] == 2 and [s["rank"] for s in report["shards"]] == [0, 1]
    assert sorted(r["source"] for r in report["recordings"]) == RECORDINGS
    assert sum(s["files"] for s in report["shards"]) == 4 and all(s["files"] == 2 for s in report["shards"])
    assert sum(s["utterances"] for s in report["shards"]) == report["utterances"]["kept"] == 5
    assert report["files_from_cache"] == sum(s["files_from_cache"] for s in report["shards"]) == reused
    assert report["skipped"] == [{"source": "manifest.json", "reason": "not audio", "detail": "not an audio file extension; left out",
                                  "start": None, "end": None}]
    text = (out / "qc_report.txt").read_text()
    assert "processes: 2" in text and "shard 0 on" in text and "shard 1 on" in text
    return report


def test_a_killed_two_process_launch_resumes_to_the_single_process_corpus(single, tmp_path, tiny_bundle_dir, tiny_en, prep_speaker_map):
    out = tmp_path / "out"
    first = launch(torchrun(), out, tiny_bundle_dir, tiny_en, prep_speaker_map)
    deadline = time.monotonic() + 300
    while not cached_entries(out) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    workers = [json.loads(p.read_text())["pid"] for p in (out / CACHE_DIR / "shards").glob("*/rank-*.alive")]
    first.kill()  # SIGKILL: the launcher cannot stop its workers (each in a session of its own) ...
    _, stderr = first.communicate()
    assert first.returncode == -signal.SIGKILL, f"the launch ended before it could be killed: {stderr[-2000:]}"
    assert len(workers) == 2 and wait_until_gone(workers, seconds=60), "... so they stop when they find it gone"
    finished = len(cached_entries(out))
    assert 1 <= finished < 4 and not (out / "dataset_dict.json").exists()

    second = launch(torchrun(), out, tiny_bundle_dir, tiny_en, prep_speaker_map)
    stdout, stderr = second.communicate(timeout=600)
    assert second.returncode == 0, stderr[-4000:]
    assert "5 utterances" in stdout and stdout.count("reused from the cache") == 2, stdout
    assert_same_corpus(out, single)
    assert_report_covers_every_shard(out, reused=finished)
    assert not list((out / CACHE_DIR).glob(".*.tmp")), "the files the killed run left half-written are cleaned"


@pytest.mark.slow
def test_two_processes_under_accelerate_write_the_single_process_corpus(single, tmp_path, tiny_bundle_dir, tiny_en, prep_speaker_map):
    out = tmp_path / "out"
    stdout, stderr = launch(accelerate_launch(), out, tiny_bundle_dir, tiny_en, prep_speaker_map).communicate(timeout=600)
    assert "5 utterances" in stdout, stderr[-4000:]
    assert_same_corpus(out, single)
    report = assert_report_covers_every_shard(out, reused=0)
    assert all(s["device"] == "cpu" for s in report["shards"])
    # Launched again with a different number of processes, every recording comes from the cache.
    stdout, stderr = launch([sys.executable], out, tiny_bundle_dir, tiny_en, prep_speaker_map).communicate(timeout=600)
    assert "5 utterances" in stdout, stderr[-4000:]
    assert json.loads((out / "qc_report.json").read_text())["files_from_cache"] == 4
    assert_same_corpus(out, single)


def test_shards_are_balanced_by_size_and_the_same_on_every_call():
    sizes = [114, 95, 53, 52, 10, 10]
    shards = assign_shards(sizes, 2)
    assert shards == assign_shards(list(sizes), 2)
    assert sorted(i for shard in shards for i in shard) == list(range(len(sizes)))
    # Largest first onto the lighter rank: 114 | 95, 53 | +52 | +10 | +10, each shard in sorted order.
    assert shards == [[0, 3], [1, 2, 4, 5]]
    assert [sum(sizes[i] for i in shard) for shard in shards] == [166, 168]
    assert assign_shards([5, 5], 4) == [[0], [1], [], []]  # more processes than recordings: some idle
    assert assign_shards(sizes, 1) == [list(range(len(sizes)))]


class _Peers(ProcessGroup):
    """A rank of a two-process group whose collectives are answered from a script (no launcher).

    Rank 0's broadcasts are put on `sent`; rank 1's take the next of `answers` (a queue: another
    thread's rank 0 `sent`). The other rank sees the output folder if `others_see` and lists the
    recordings with digest `others_list` (None: as this rank does).
    """

    def __init__(self, rank: int, answers: queue.Queue | None = None, others_see: bool = True,
                 others_list: str | None = None) -> None:
        super().__init__(rank, 2, torch.device("cpu"))
        object.__setattr__(self, "script", (answers, others_see, others_list))
        object.__setattr__(self, "sent", queue.Queue())

    def broadcast(self, value):
        if self.rank == 0:
            self.sent.put(value)
            return value
        return self.script[0].get(timeout=60)

    def gather(self, value):
        other = (self.script[1], "node-b" if self.rank == 0 else "node-a", self.script[2] or value[2])
        return [value, other] if self.rank == 0 else [other, value]


def _answers(*values) -> queue.Queue:
    answers = queue.Queue()
    for value in values:
        answers.put(value)
    return answers


def test_a_failed_shard_stops_the_others_with_its_error(tmp_path):
    main = ShardBoard.open(tmp_path, _Peers(0), "digest")
    with ShardBoard(main.folder, _Peers(1)) as peer:
        peer.failed(MemoryError("CUDA out of memory"))
    main.done({"entries": {}})
    with pytest.raises(ShardError, match=r"shard 1 \(on .*\) failed: MemoryError: CUDA out of memory.*run the same command again"):
        main.wait_for_all(poll_seconds=0.01)


def test_a_silent_shard_stops_the_others_instead_of_a_hang(tmp_path):
    main = ShardBoard.open(tmp_path, _Peers(0), "digest")
    main.stale_seconds = 0.3
    main.done({"entries": {}})
    start = time.monotonic()
    with pytest.raises(ShardError, match=r"shard 1 has given no sign of life for 0 s: it died or hangs"):
        main.wait_for_all(poll_seconds=0.02)
    assert time.monotonic() - start < 30


def test_a_folder_the_other_processes_cannot_see_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "SHARED_CHECK_SECONDS", 0.2)
    with pytest.raises(SharedFolderError, match=r"rank 1 on node-b cannot see the files rank 0 writes.*filesystem every node mounts"):
        ShardBoard.open(tmp_path / "cache", _Peers(0, others_see=False), "digest")
    # Seen from the blind rank: rank 0's run folder never appears in its own copy of the output folder.
    with pytest.raises(SharedFolderError, match=r"rank 1 on .* cannot see"):
        ShardBoard.open(tmp_path / "elsewhere", _Peers(1, _answers("0123456789ab")), "digest")


def test_processes_that_list_different_recordings_are_refused_before_any_work(tmp_path, monkeypatch):
    with pytest.raises(ShardError, match=r"listed different recordings \(shard 0 on .*: aaaa, shard 1 on node-b: bbbb\).*same input at the same path"):
        ShardBoard.open(tmp_path / "cache", _Peers(0, others_list="bbbb"), "aaaa")
    # Through a run: refused before this process loads a model or prepares a recording.
    started = []
    monkeypatch.setattr(shards, "_prepare_shard", lambda *args: started.append(args))
    sources = Sources(tuple(SourceFile(FIXTURES / name, name) for name in RECORDINGS), ("alice", "bob"), ())
    with pytest.raises(ShardError, match="listed different recordings"):
        shards.run_sharded(PrepConfig(FIXTURES, tmp_path / "out"), sources, None, None, _Peers(0, others_list="bbbb"))
    assert started == [] and not list((tmp_path / "out" / CACHE_DIR).glob("shards/*/rank-*"))


def test_a_main_process_stopped_while_writing_the_corpus_fails_every_process(tmp_path, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    def prepared(*args):
        summary = {"files_from_cache": 0, "stage_seconds": {}, "entries": {}, "failed": {}}
        return SimpleNamespace(timer=StageTimer()), summary

    monkeypatch.setattr(shards, "_prepare_shard", prepared)
    monkeypatch.setattr(shards, "write_outputs", interrupted)
    main = _Peers(0)
    config, outcomes = PrepConfig(tmp_path / "in", tmp_path / "out"), {}

    def run(group: ProcessGroup) -> None:
        try:
            outcomes[group.rank] = shards.run_sharded(config, Sources((), (), ()), None, None, group)
        except BaseException as exc:  # noqa: BLE001 - each rank's ending is what the test checks
            outcomes[group.rank] = exc

    ranks = [threading.Thread(target=run, args=(group,)) for group in (main, _Peers(1, main.sent))]
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join(timeout=60)
    assert isinstance(outcomes[0], KeyboardInterrupt)
    # The other process stops with the error, so its launcher reports the launch failed.
    assert isinstance(outcomes[1], ShardError) and "the main process failed: KeyboardInterrupt" in str(outcomes[1])
