"""The speech server (`dia2.api_server`) on a loopback port for the e2e tests, and the raw HTTP
a client sends it: requests left open, /health polled until the queue is as expected."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import REPO_ROOT

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "audio"
SHORT = "[S1] Hello there. [S2] Hi!"
KEY = "test-key"
# About 1,500 words: minutes of audio on the tiny model, far longer than any test here waits.
ENDLESS = "[S1] " + " ".join(f"This is sentence {i} of a long story." for i in range(190))


class LiveServer:
    """A uvicorn server on a free loopback port, in a thread."""

    def __init__(self, app) -> None:
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, key: str | None = KEY):
        """The official `openai` client on this server."""
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key or "none", max_retries=0, timeout=120)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def server_options(tmp: Path, *extra: str):
    """The server's options for the tiny model on the CPU, voices in `tmp`, two slots, and `extra` flags."""
    from dia2.api_server import build_parser, parse_options

    return parse_options(build_parser(), ["--tiny", "--device", "cpu", "--voices-dir", str(tmp), "--slots", "2", *extra])


def auth_header(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def api_error(response: httpx.Response, status: int) -> dict:
    """The OpenAI-shaped error of `response`, which must have `status`."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def open_request(port: int, path: str, body: dict, key: str | None = None) -> socket.socket:
    """A raw HTTP/1.1 POST sent and left open: the client is there until the socket closes."""
    data = json.dumps(body).encode()
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}"
            f"Content-Length: {len(data)}\r\n\r\n")
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(head.encode() + data)
    return sock


def speech_body(script: str, fmt: str = "pcm", seed: int = 1) -> dict:
    return {"model": "tts-1", "voice": "alloy", "input": script, "response_format": fmt, "seed": seed}


def health(url: str) -> dict:
    return httpx.get(f"{url}/health", timeout=10).json()


def wait_for(url: str, seconds: float = 30, **expected: int) -> dict:
    """Poll /health until every `expected` field has its value; the last answer either way."""
    deadline = time.time() + seconds
    while True:
        state = health(url)
        if all(state[k] == v for k, v in expected.items()) or time.time() > deadline:
            return state
        time.sleep(0.05)


def close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def speak(url: str, voice: str, seed: int = 7, key: str = KEY, fmt: str = "pcm") -> bytes:
    """The bytes of SHORT spoken by `voice` at `url` (the request must succeed)."""
    body = {"model": "tts-1", "voice": voice, "input": SHORT, "response_format": fmt, "seed": seed}
    response = httpx.post(f"{url}/v1/audio/speech", json=body, headers=auth_header(key), timeout=120)
    assert response.status_code == 200, response.text
    return response.content
