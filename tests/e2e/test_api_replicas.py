"""Two speech server processes (`python -m dia2.api_server --tiny`) sharing one voices folder, as
replicas behind a load balancer would: what one stores, replaces or deletes the other serves at
once, and concurrent writers through both never corrupt the folder."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from dia2.serving.voice_folder import VoiceFolder
from tests.helpers.servers import FIXTURES, SHORT
from tests.helpers.voice_folder import LOAD_VOICE_FOLDER

pytest.importorskip("uvicorn")

REPO_ROOT = Path(__file__).resolve().parents[2]
HUB_ADAPTER = "tester/tiny-lora"
VOICE_FILES = ("voice.json", "codes.npy")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hub_cache(root: Path) -> Path:
    """An offline Hub cache holding a random tiny-geometry LoRA as HUB_ADAPTER (clients may only
    name Hub adapters; HF_HUB_OFFLINE=1 serves it from here)."""
    from tests.helpers.adapters import save_random_adapter

    adapter = save_random_adapter(root / "adapter", seed=1, r=4, lora_alpha=8)
    commit = "0" * 40
    repo = root / "hub" / f"models--{HUB_ADAPTER.replace('/', '--')}"
    shutil.copytree(adapter, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return root / "hub"


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, tiny_en):
    """(folder, url_a, url_b): two server processes on free loopback ports, one voices folder."""
    root = tmp_path_factory.mktemp("replicas")
    folder = root / "voices"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(_hub_cache(root)), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO_ROOT)}
    ports = [_free_port(), _free_port()]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "dia2.api_server", "--tiny", "--device", "cpu", "--port", str(port), "--voices-dir",
             str(folder), "--slots", "1", "--whisper-model", tiny_en, "--log-level", "warning",
             "--max-frames", "40", "--cfg", "1"],  # short, unguided generations: the test is about voices
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for port in ports
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for proc, url in zip(procs, urls):
            _wait_up(proc, url)
        yield folder, urls[0], urls[1]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


def _wait_up(proc: subprocess.Popen, url: str) -> None:
    deadline = time.time() + 180
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "a server did not come up"
        time.sleep(0.3)


def _upload(url: str, name: str, fixture: str | None = "voice_a", **fields: str) -> httpx.Response:
    files = {"file": (f"{fixture}.flac", (FIXTURES / f"{fixture}.flac").read_bytes(), "audio/flac")} if fixture else None
    return httpx.post(f"{url}/v1/voices", data={"name": name, **fields}, files=files, timeout=180)


def _listed(url: str) -> dict[str, dict]:
    return {v["id"]: v for v in httpx.get(f"{url}/v1/voices", timeout=30).json()["voices"]}


def _speak(url: str, voice: str, seed: int = 7) -> httpx.Response:
    body = {"model": "tts-1", "voice": voice, "input": SHORT, "response_format": "pcm", "seed": seed}
    return httpx.post(f"{url}/v1/audio/speech", json=body, timeout=180)


def _audio(url: str, voice: str, seed: int = 7) -> bytes:
    response = _speak(url, voice, seed)
    assert response.status_code == 200, response.text
    return response.content


def test_a_voice_stored_through_one_replica_is_served_replaced_and_deleted_through_the_other(replicas):
    _, a, b = replicas
    created = _upload(a, "me")
    assert created.status_code == 201, created.text
    first = created.json()["transcript"]
    assert "me" in _listed(b) and {"id": "me", "name": "me"} in httpx.get(f"{b}/v1/audio/voices", timeout=30).json()["voices"]
    # The same stored voice and seed give the same audio on both replicas.
    spoken = _audio(b, "me")
    assert spoken == _audio(a, "me")
    # Stored once: the other replica refuses the name too.
    assert _upload(b, "me").status_code == 409
    # Replaced through B: A serves the new one (other words, other audio) without a restart.
    replaced = _upload(b, "me", "voice_b", replace="true")
    assert replaced.status_code == 201, replaced.text
    assert replaced.json()["transcript"] != first and _listed(a)["me"]["transcript"] == replaced.json()["transcript"]
    respoken = _audio(a, "me")
    assert respoken != spoken and respoken == _audio(b, "me")
    # Deleted through A: gone from both.
    assert httpx.delete(f"{a}/v1/voices/me", timeout=30).json() == {"id": "me", "deleted": True}
    for url in (a, b):
        assert "me" not in _listed(url) and _speak(url, "me").status_code == 400
    assert httpx.delete(f"{b}/v1/voices/me", timeout=30).status_code == 404


def test_an_adapter_voice_added_through_one_replica_is_served_by_the_other(replicas):
    _, a, b = replicas
    created = _upload(a, "lora", fixture=None, adapter=HUB_ADAPTER)
    assert created.status_code == 201, created.text
    assert _listed(b)["lora"]["adapter"] is True
    adapted = _audio(b, "lora")  # B loads the adapter at this first request
    assert adapted == _audio(a, "lora") and adapted != _audio(b, "alloy")
    assert httpx.delete(f"{b}/v1/voices/lora", timeout=30).status_code == 200
    for url in (a, b):
        assert _speak(url, "lora").status_code == 400


def _lock_waiters(path: Path) -> bool:
    """Whether some process waits for a flock on `path` (Linux lists waiters in /proc/locks with '->')."""
    inode = f":{path.stat().st_ino}"
    return any("->" in fields and any(f.endswith(inode) for f in fields)
               for fields in (line.split() for line in Path("/proc/locks").read_text().splitlines()))


def test_a_voices_listing_waiting_for_the_folder_lock_holds_up_no_other_request(replicas):
    folder, a, _ = replicas
    listed: dict[str, dict] = {}
    # As a writer on another replica between its two renames: the folder changed, and it is locked.
    with VoiceFolder(folder).locked(exclusive=True):
        (folder / "pending").mkdir()
        lister = threading.Thread(target=lambda: listed.update(_listed(a)))
        lister.start()
        deadline = time.time() + 60
        while not _lock_waiters(folder):
            assert time.time() < deadline and lister.is_alive(), "the listing never waited for the lock"
            time.sleep(0.02)
        # Replica A's listing waits for the lock in a worker thread; its event loop answers the rest.
        assert httpx.get(f"{a}/health", timeout=30).json()["status"] == "ok"
        assert "dia2" in {m["id"] for m in httpx.get(f"{a}/v1/models", timeout=30).json()["data"]}
        assert lister.is_alive() and not listed
    lister.join(timeout=60)
    (folder / "pending").rmdir()
    assert "alloy" in listed and "pending" not in listed


def _incomplete(path: str) -> list[str]:
    """The files a voice folder lacks (none when it was moved away: a swap in progress)."""
    missing = [f for f in VOICE_FILES if not os.path.exists(os.path.join(path, f))]
    return missing if os.path.isdir(path) else []


def test_concurrent_uploads_through_both_replicas_leave_one_consistent_folder(replicas):
    folder, a, b = replicas
    before = set(_listed(a))
    results: dict[str, list[int]] = {}
    seen_incomplete: list[str] = []
    done = threading.Event()

    def watch() -> None:
        # What any reader of the folder sees while writers race: whole voices or none.
        while not done.is_set():
            for entry in os.scandir(folder):
                # Checked twice: a folder may be swapped for its successor between two looks.
                if not entry.name.startswith(".") and _incomplete(entry.path) and _incomplete(entry.path):
                    seen_incomplete.append(f"{entry.name} without {_incomplete(entry.path)}")
            time.sleep(0.005)

    def race(jobs: list[tuple[str, str, str, dict]]) -> None:
        def run(key: str, url: str, name: str, fields: dict) -> None:
            response = _upload(url, name, fields.pop("fixture", "voice_a"), **fields)
            results.setdefault(key, []).append(response.status_code)

        threads = [threading.Thread(target=run, args=job) for job in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not any(t.is_alive() for t in threads), "an upload hung"

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        race([("same", url, "same", {}) for url in (a, b)]
             + [("solo-a", a, "solo-a", {}), ("solo-b", b, "solo-b", {"fixture": "voice_b"})])
        # Replacing at once through both: the last writer wins, both replicas then serve the winner.
        race([("replace", a, "same", {"replace": "true"}), ("replace", b, "same", {"fixture": "voice_b", "replace": "true"})])
    finally:
        done.set()
        watcher.join()
    assert sorted(results["same"]) == [201, 409], results
    assert results["solo-a"] == [201] and results["solo-b"] == [201] and results["replace"] == [201, 201]
    assert seen_incomplete == []
    names = {"same", "solo-a", "solo-b"}
    assert sorted(p.name for p in folder.iterdir() if p.name not in before) == sorted(names), "leftovers in the folder"
    listed_a, listed_b = _listed(a), _listed(b)
    assert listed_a == listed_b
    assert listed_a["solo-a"]["transcript"] != listed_a["solo-b"]["transcript"]
    assert listed_a["same"]["transcript"] in (listed_a["solo-a"]["transcript"], listed_a["solo-b"]["transcript"])
    assert _audio(a, "same") == _audio(b, "same")
    # Every voice in the folder loads on its own, as a restarted replica would load it.
    from dia2.generation.voice import read_voice

    for name in names:
        assert read_voice(folder / name).prefix.words


def test_a_killed_writers_leftovers_are_tidied_and_a_live_writers_are_not(replicas):
    folder, a, b = replicas
    assert _upload(a, "kept", fixture=None, adapter=HUB_ADAPTER).status_code == 201
    # A writer killed between moving a voice aside and putting its successor in, with a half-written
    # successor; and a live writer in the middle of its work.
    crash = LOAD_VOICE_FOLDER + (
        "import os, signal, sys\n"
        "disk = VoiceFolder(sys.argv[1])\n"
        "(disk.path / 'kept').rename(disk.work_path('old', 'kept'))\n"
        "stage = disk.work_path('new', 'kept'); stage.mkdir(); (stage / 'meta.json').write_text('{')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    live = LOAD_VOICE_FOLDER + (
        "import sys\n"
        "stage = VoiceFolder(sys.argv[1]).work_path('new', 'busy'); stage.mkdir(); print(stage.name, flush=True)\n"
        "sys.stdin.read()\n"
    )
    killed = subprocess.run([sys.executable, "-c", crash, str(folder)], timeout=60, check=False)
    assert killed.returncode == -signal.SIGKILL
    writer = subprocess.Popen([sys.executable, "-c", live, str(folder)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        busy = writer.stdout.readline().strip()
        assert busy.startswith(".new-busy-") and "kept" not in _listed(b)
        # The next write through either replica tidies what the dead writer left, not the live one's.
        assert _upload(b, "trigger", fixture=None, adapter=HUB_ADAPTER).status_code == 201
        hidden = sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != ".lock")
        assert hidden == [busy]
        assert _listed(a)["kept"]["adapter"] and _listed(b)["kept"]["adapter"]
    finally:
        writer.communicate("", timeout=30)
    shutil.rmtree(folder / busy)
    for name in ("kept", "trigger"):
        assert httpx.delete(f"{a}/v1/voices/{name}", timeout=30).status_code == 200
