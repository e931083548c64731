"""Speech server (`python -m dia2.api_server`) against the engine it serves: overhead per request,
time to first byte, requests/s sustained at the slot count (issue 10), and a long queue of
clients of whom some give up (issue 24).

    python bench/api_server.py [--config PATH] [--slots 2] [--seconds 60] [--repeats 5] [--threads N]
    python bench/api_server.py --quick      # 1 repeat, 10 s sustained: a smoke test
    python bench/api_server.py --queue-only [--clients 50] [--max-queued 60]   # scenario 4 alone

The app is built as `dia2.api_server.build_app` builds it (`Engine` started in its thread, a
`VoiceStore` on a temporary folder, `create_app`), but over a random-weight model of any geometry
(`--config`; default the tiny one, fast on CPU) with the tiny tokenizer and Mimi
(bench/engine.py's `build_tts`), and served by uvicorn on a free loopback port in a thread of
this process; clients are httpx in other threads of the same process.

1. Overhead: one request (SCRIPT, seed SEED, voice "alloy", which adds no prefix) timed end to
   end through HTTP (POST /v1/audio/speech, streamed, every byte read) and through the engine
   called directly, doing the same work the server does: submit a `Request` with the server's
   generation config, iterate the handle's `AudioChunk`s (the streaming Mimi decode) and push each
   through `AudioEncoder` (pcm: int16 conversion only; mp3: the lame encoder). The two paths
   alternate which goes first; medians over `--repeats` (and the median of each back-to-back
   pair's ratio), after one untimed run of each. Their bytes are compared, so both paths are
   checked to make the same audio. Target: overhead <= 10 %.
2. Time to first byte vs total: from the same runs (SCRIPT gives ~10 s of audio on the tiny model
   with SEED; the audio seconds are reported, as another geometry gives another length).
3. Sustained: `--slots` clients, each posting pcm requests (SCRIPT, a new seed each) back to back
   for `--seconds`; requests started before the deadline are finished and counted. The engine
   queues nothing (max_queued=0), so a request finding every slot busy gets 429: none should,
   with as many clients as slots. Busy slots are sampled every 50 ms.
4. Queue (`queue_load`): a server with `--slots` slots and `--max-queued` queue places (60) and a
   frame limit (QUEUE_MAX_FRAMES: each request holds its slot about 2 s); after one untimed
   request, `--clients` clients (50) open a pcm stream (SHORT, a seed each) at once from one
   asyncio loop in this process (the server's GIL is theirs too: harder than real clients); every
   third gives up (closes its connection) after GIVE_UP_S if its stream has not ended. The others
   read to the end. For every stream that was served: the longest its client waited for the next
   bytes once the answer had started (from the headers to the first bytes, then between two
   reads: the "gap"; percentiles over streams and its maximum); `/health` polled every
   0.1 s meanwhile (latency percentiles and maximum); the 429 rate; and `/health` once all are
   done (busy and queued must be 0). Targets: every gap < 1 s, /health < 0.2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import torch
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import build_tts
from machine import describe

from dia2.audio.encode import AudioEncoder
from dia2.generation.config import GenerationConfig
from dia2.generation.tts import Dia2
from dia2.serving.api import ApiSettings, create_app
from dia2.serving.engine import Engine, EngineConfig, Request
from dia2.serving.voices import VoiceError, VoiceStore

ROOT = Path(__file__).resolve().parents[1]
# 121 frames (9.7 s) with seed 5 on the tiny random-weight model (frames depend on the sampled
# actions, hence on the seed and the geometry).
SCRIPT = "[S1] Hello there, how are you doing today? [S2] I am doing well, thank you for asking. [S1] Glad to hear it, see you soon."
SEED = 5
VOICE = "alloy"
TARGET_OVERHEAD_PCT = 10.0
FORMATS = ("pcm", "mp3")
SHORT = "[S1] Hello there. [S2] Hi!"
QUEUE_MAX_FRAMES = 100
"""Frames each request of the queue scenario may make (8 s of audio: about 2 s of its slot here)."""
GIVE_UP_S = 1.0
"""Seconds after which every third client of the queue scenario closes its connection."""
TARGET_GAP_S, TARGET_HEALTH_S = 1.0, 0.2


@dataclass(frozen=True)
class Run:
    """One request: seconds to its first audio byte and to its last, and the bytes."""

    first_byte_s: float
    total_s: float
    data: bytes


class LiveServer:
    """uvicorn serving `app` on a free loopback port, in a daemon thread."""

    def __init__(self, app) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="uvicorn")
        self.thread.start()
        deadline = time.perf_counter() + 60
        while not self.server.started:
            if time.perf_counter() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"uvicorn did not start on port {self.port}")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def refuse_uploads(*args, **kwargs):
    """The voice store's make_prefix: this benchmark serves the builtin voices only."""
    raise VoiceError("the benchmark server takes no voice uploads: use a builtin voice such as 'alloy'")


def build_server(tts: Dia2, slots: int, voices_dir: Path, settings: ApiSettings,
                 max_queued: int = 0) -> tuple[Engine, LiveServer]:
    """A started engine and the API over it, listening on loopback."""
    engine = Engine(tts, EngineConfig(slots=slots, max_queued=max_queued)).start()
    voices = VoiceStore(voices_dir, refuse_uploads, sample_rate=tts.codec.sample_rate)
    return engine, LiveServer(create_app(engine, voices, settings))


def speech_body(script: str, seed: int, fmt: str) -> dict:
    return {"model": "dia2", "input": script, "voice": VOICE, "response_format": fmt, "seed": seed}


def through_http(client: httpx.Client, url: str, script: str, seed: int, fmt: str) -> Run:
    """POST /v1/audio/speech, streamed; every byte read."""
    start = time.perf_counter()
    data, first = bytearray(), None
    with client.stream("POST", f"{url}/v1/audio/speech", json=speech_body(script, seed, fmt)) as response:
        if response.status_code != 200:
            raise RuntimeError(f"the server answered {response.status_code}: {response.read()[:500]!r}")
        for piece in response.iter_bytes():
            if piece and first is None:
                first = time.perf_counter() - start
            data += piece
    return Run(first or float("nan"), time.perf_counter() - start, bytes(data))


def through_engine(engine: Engine, config: GenerationConfig, script: str, seed: int, fmt: str) -> Run:
    """The server's work without HTTP: generate, decode each chunk with Mimi, encode it."""
    start = time.perf_counter()
    handle = engine.submit(Request(script, replace(config, seed=seed)))
    encoder = AudioEncoder(fmt, engine.tts.codec.sample_rate)
    data, first = bytearray(), None
    for chunk in handle:
        piece = encoder.push(chunk.waveform)
        if piece and first is None:
            first = time.perf_counter() - start
        data += piece
    data += encoder.finish()
    return Run(first or float("nan"), time.perf_counter() - start, bytes(data))


def overhead(http: Callable[[str], Run], direct: Callable[[str], Run], fmt: str, repeats: int) -> dict:
    """Median end-to-end seconds through HTTP and directly, interleaved (alternating which runs
    first, so a change in the machine's load hits both), and the overhead of HTTP."""
    runs: dict[str, list[Run]] = {"http": [], "engine": []}
    for i in range(repeats):
        pair = [("http", http), ("engine", direct)]
        for name, fn in pair if i % 2 == 0 else pair[::-1]:
            runs[name].append(fn(fmt))
    reference = runs["engine"][0].data
    total = {name: statistics.median(r.total_s for r in rs) for name, rs in runs.items()}
    first = {name: statistics.median(r.first_byte_s for r in rs) for name, rs in runs.items()}
    return {
        "format": fmt,
        "http_total_s": total["http"],
        "engine_total_s": total["engine"],
        "overhead_pct": 100 * (total["http"] / total["engine"] - 1),
        "overhead_s": total["http"] - total["engine"],
        # Each pair ran back to back, so its ratio is less exposed to the machine's load drifting.
        "overhead_pct_paired_median": statistics.median(
            100 * (h.total_s / e.total_s - 1) for h, e in zip(runs["http"], runs["engine"])
        ),
        "http_first_byte_s": first["http"],
        "engine_first_byte_s": first["engine"],
        "bytes": len(reference),
        "same_bytes_both_paths": all(r.data == reference for rs in runs.values() for r in rs),
        "http_total_all_s": [r.total_s for r in runs["http"]],
        "engine_total_all_s": [r.total_s for r in runs["engine"]],
    }


def sustained(url: str, engine: Engine, script: str, clients: int, seconds: float) -> dict:
    """`clients` threads posting pcm requests back to back until `seconds` have passed."""
    statuses: Counter[int] = Counter()
    audio_bytes: list[int] = []
    busy: list[int] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds
    stopped = threading.Event()

    def client_loop(index: int) -> None:
        with httpx.Client(timeout=600) as client:
            n = 0
            while time.perf_counter() < deadline:
                response = client.post(f"{url}/v1/audio/speech", json=speech_body(script, 1000 * (index + 1) + n, "pcm"))
                n += 1
                with lock:
                    statuses[response.status_code] += 1
                    if response.status_code == 200:
                        audio_bytes.append(len(response.content))

    def sample_slots() -> None:
        while not stopped.wait(0.05):
            busy.append(engine.busy_slots)

    sampler = threading.Thread(target=sample_slots, daemon=True)
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    sampler.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    stopped.set()
    sampler.join()
    rate = engine.tts.codec.sample_rate
    audio_s = sum(audio_bytes) / 2 / rate
    return {
        "clients": clients,
        "seconds_asked": seconds,
        "wall_s": wall,
        "requests_completed": len(audio_bytes),
        "requests_per_s": len(audio_bytes) / wall,
        "audio_s_per_s": audio_s / wall,
        "audio_s_per_request": audio_s / max(1, len(audio_bytes)),
        "status_counts": {str(k): v for k, v in sorted(statuses.items())},
        "no_429": statuses[429] == 0,
        "mean_busy_slots": statistics.fmean(busy) if busy else None,
    }


def queue_load(url: str, clients: int, give_up_every: int = 3, give_up_s: float = GIVE_UP_S) -> dict:
    """Scenario 4 against a running server (see the module's docstring); returns its figures."""
    return asyncio.run(_queue_load(url, clients, give_up_every, give_up_s))


async def _queue_load(url: str, clients: int, give_up_every: int, give_up_s: float) -> dict:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await _stream(client, url, -1, None)  # untimed: the server's first-use costs are not the queue's
        stop = threading.Event()
        health: list[float] = []
        # In a thread of its own: a poll waits for the server, not behind the clients' own sends.
        watcher = threading.Thread(target=_watch_health, args=(url, stop, health), daemon=True)
        watcher.start()
        start = time.perf_counter()
        runs = await asyncio.gather(*(
            _stream(client, url, i, give_up_s if i % give_up_every == give_up_every - 1 else None) for i in range(clients)
        ))
        wall = time.perf_counter() - start
        stop.set()
        watcher.join()
        final = await _settled_health(client, url)
    served = [r for r in runs if r["status"] == 200 and r["complete"]]
    gaps = sorted(r["largest_gap_s"] for r in served)
    statuses = Counter("gave up before an answer" if r["status"] is None else str(r["status"]) for r in runs)
    return {
        "clients": clients,
        "gave_up": sum(r["gave_up"] for r in runs),
        "served_whole": len(served),
        "status_counts": dict(sorted(statuses.items())),
        "rate_429": statuses["429"] / clients,
        "wall_s": wall,
        "largest_gap_s": _percentiles(gaps),
        "health_latency_s": _percentiles(sorted(health)),
        "health_samples": len(health),
        "final_health": {k: final[k] for k in ("busy", "queued", "max_queued")},
        f"every_gap_under_{TARGET_GAP_S:g}s": bool(gaps) and gaps[-1] < TARGET_GAP_S,
        f"health_under_{TARGET_HEALTH_S:g}s": bool(health) and max(health) < TARGET_HEALTH_S,
        "ends_idle": final["busy"] == 0 and final["queued"] == 0,
    }


async def _stream(client: httpx.AsyncClient, url: str, index: int, give_up_s: float | None) -> dict:
    """One client: a pcm stream read to its end (or given up after `give_up_s`)."""
    run = {"status": None, "complete": False, "gave_up": False, "largest_gap_s": 0.0, "bytes": 0}
    try:
        async with asyncio.timeout(give_up_s):
            async with client.stream("POST", f"{url}/v1/audio/speech", json=speech_body(SHORT, 100 + index, "pcm")) as r:
                run["status"], last = r.status_code, time.perf_counter()  # the answer started: audio is due
                async for piece in r.aiter_raw():
                    now = time.perf_counter()
                    run["largest_gap_s"] = max(run["largest_gap_s"], now - last)
                    last, run["bytes"] = now, run["bytes"] + len(piece)
                run["complete"] = r.status_code == 200
    except TimeoutError:
        run["gave_up"] = True
    return run


def _watch_health(url: str, stop: threading.Event, latencies: list[float]) -> None:
    with httpx.Client(timeout=60) as client:
        while True:
            start = time.perf_counter()
            response = client.get(f"{url}/health")
            latencies.append(time.perf_counter() - start)
            response.raise_for_status()
            if stop.wait(0.1):
                return


async def _settled_health(client: httpx.AsyncClient, url: str, seconds: float = 10.0) -> dict:
    """/health once busy and queued are 0, or after `seconds`."""
    deadline = time.perf_counter() + seconds
    while True:
        state = (await client.get(f"{url}/health")).json()
        if (state["busy"] == 0 and state["queued"] == 0) or time.perf_counter() > deadline:
            return state
        await asyncio.sleep(0.05)


def _percentiles(values: list[float]) -> dict:
    """p50, p90, p99 and max of sorted `values` (nearest rank)."""
    if not values:
        return {}
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": values[-1]}


def run_queue(tts: Dia2, slots: int, max_queued: int, clients: int) -> dict:
    """Scenario 4 on a fresh server (frame-limited requests, a queue of `max_queued`)."""
    settings = ApiSettings(model_name="dia2", generation=GenerationConfig(max_frames=QUEUE_MAX_FRAMES))
    with tempfile.TemporaryDirectory() as voices_dir:
        engine, server = build_server(tts, slots, Path(voices_dir), settings, max_queued=max_queued)
        try:
            return {"slots": slots, "max_queued": max_queued, **queue_load(server.url, clients)}
        finally:
            server.stop()
            engine.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=None, help="model geometry (default: the tiny one; e.g. configs/models/dia2-100m.json)")
    p.add_argument("--slots", type=int, default=2, help="engine slots, and clients in the sustained phase")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the sustained phase")
    p.add_argument("--repeats", type=int, default=5, help="timed requests per path and format (median is kept)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:n]")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (default: all cores)")
    p.add_argument("--quick", action="store_true", help="1 repeat, 10 s sustained: a smoke test")
    p.add_argument("--clients", type=int, default=50, help="clients of the queue scenario")
    p.add_argument("--max-queued", type=int, default=60, help="queue places of the queue scenario's server")
    p.add_argument("--queue-only", action="store_true", help="run the queue scenario alone")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.seconds = 1, 10.0
    if min(args.slots, args.repeats, args.threads, args.clients) < 1 or args.seconds <= 0 or args.max_queued < 0:
        p.error("--slots, --repeats, --threads and --clients must be at least 1, --seconds above 0, --max-queued >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    tts = build_tts(args.config, args.device)
    header = {"benchmark": "api_server", "machine": describe(), "load_average_before": load_before}
    if args.queue_only:
        queue = run_queue(tts, args.slots, args.max_queued, args.clients)
        print(json.dumps({**header, "load_average_after": os.getloadavg(), "queue": queue}, indent=2))
        return 0
    settings = ApiSettings(model_name="dia2", generation=GenerationConfig())
    with tempfile.TemporaryDirectory() as voices_dir, httpx.Client(timeout=600) as client:
        engine, server = build_server(tts, args.slots, Path(voices_dir), settings)
        try:
            http = lambda fmt: through_http(client, server.url, SCRIPT, SEED, fmt)
            direct = lambda fmt: through_engine(engine, settings.generation, SCRIPT, SEED, fmt)
            http("pcm"), direct("pcm")  # warm-up: allocator, kernels, the first connection
            formats = {fmt: overhead(http, direct, fmt, args.repeats) for fmt in FORMATS}
            steady = sustained(server.url, engine, SCRIPT, args.slots, args.seconds)
        finally:
            server.stop()
            engine.stop()
    queue = run_queue(tts, args.slots, args.max_queued, args.clients)
    pcm = formats["pcm"]
    config = "tiny (dia2.tiny)" if args.config is None else args.config
    if isinstance(config, Path) and config.resolve().is_relative_to(ROOT):
        config = config.resolve().relative_to(ROOT)
    result = {
        **header,
        "load_average_after": os.getloadavg(),
        "config": str(config),
        "parameters": sum(p.numel() for p in tts.model.parameters()),
        "device": args.device,
        "slots": args.slots,
        "script": SCRIPT,
        "seed": SEED,
        "repeats": args.repeats,
        "overhead": formats,
        f"target_overhead_{TARGET_OVERHEAD_PCT:g}pct_met": pcm["overhead_pct"] <= TARGET_OVERHEAD_PCT,
        "time_to_first_byte": {
            "format": "pcm",
            "audio_s": pcm["bytes"] / 2 / tts.codec.sample_rate,
            "first_byte_s": pcm["http_first_byte_s"],
            "total_s": pcm["http_total_s"],
            "first_byte_fraction_of_total": pcm["http_first_byte_s"] / pcm["http_total_s"],
            "mp3_first_byte_s": formats["mp3"]["http_first_byte_s"],
        },
        "sustained": steady,
        "queue": queue,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
