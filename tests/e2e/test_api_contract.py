"""The speech server against OpenAI's contract and an operator's needs (issue 24), over loopback
sockets: the official `openai` client where it fits, raw HTTP for the rest."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.helpers.servers import (
    ENDLESS,
    KEY,
    SHORT,
    LiveServer,
    api_error,
    auth_header,
    close,
    open_request,
    server_options,
    speech_body,
    wait_for,
)

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_bundle_dir):
    from dia2.api_server import build_app

    server = LiveServer(build_app(server_options(tmp_path_factory.mktemp("voices"), "--api-key", KEY, "--max-queued", "2")))
    yield server
    server.stop()


def test_models_carry_created_and_each_can_be_retrieved(live):
    client = live.client()
    listed = client.models.list().data
    assert {m.id for m in listed} >= {"dia2-tiny", "tts-1", "gpt-4o-mini-tts"}
    assert all(isinstance(m.created, int) and m.created > 1_600_000_000 for m in listed)
    model = client.models.retrieve("tts-1")
    assert (model.id, model.object, model.owned_by) == ("tts-1", "model", "dia2")
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("whisper-1")
    assert caught.value.body["code"] == "model_not_found" and "tts-1" in caught.value.body["message"]


@pytest.mark.parametrize("voice", ["marin", "cedar"])
def test_every_current_openai_voice_speaks(live, voice):
    spoken = live.client().audio.speech.create(model="gpt-4o-mini-tts", voice=voice, input=SHORT, response_format="wav")
    assert spoken.response.status_code == 200 and len(spoken.content) > 1000
    assert {"id": voice, "name": voice} in httpx.get(f"{live.url}/v1/audio/voices", timeout=30).json()["voices"]


def test_an_unknown_voice_is_a_bad_request_naming_the_voices(live):
    with pytest.raises(openai.BadRequestError) as caught:
        live.client().audio.speech.create(model="tts-1", voice="nobody", input=SHORT)
    assert caught.value.body["param"] == "voice" and "cedar" in caught.value.body["message"]


def test_bad_json_and_a_wrongly_typed_voice_are_named_plainly(live):
    broken = httpx.post(f"{live.url}/v1/audio/speech", content=b'{"model": "tts-1", "input": "hi", voice}',
                        headers={**auth_header(), "Content-Type": "application/json"}, timeout=30)
    error = api_error(broken, 400)
    assert error["param"] is None and "not valid JSON" in error["message"] and not re.match(r"\d+:", error["message"])
    for voice in (5, {"name": "alloy"}, ["alloy"]):
        body = {"model": "tts-1", "input": SHORT, "voice": voice}
        error = api_error(httpx.post(f"{live.url}/v1/audio/speech", json=body, headers=auth_header(), timeout=30), 400)
        assert error["param"] == "voice" and "voice name" in error["message"], error


def test_the_bearer_scheme_is_case_insensitive(live):
    body = {"model": "tts-1", "voice": "alloy", "input": SHORT, "response_format": "pcm"}
    for scheme in ("bearer", "BEARER"):
        response = httpx.post(f"{live.url}/v1/audio/speech", json=body, headers={"Authorization": f"{scheme} {KEY}"},
                              timeout=120)
        assert response.status_code == 200, response.text
    api_error(httpx.post(f"{live.url}/v1/audio/speech", json=body, headers={"Authorization": f"Basic {KEY}"}, timeout=30),
              401)


def test_head_options_and_405_with_allow(live):
    head = httpx.head(f"{live.url}/health", timeout=30)
    assert head.status_code == 200 and head.content == b""
    assert httpx.head(f"{live.url}/v1/models", timeout=30).status_code == 200
    for method in ("GET", "HEAD", "PUT"):
        refused = httpx.request(method, f"{live.url}/v1/audio/speech", headers=auth_header(), timeout=30)
        assert refused.status_code == 405 and refused.headers["allow"] == "OPTIONS, POST", (method, refused.headers)
        if method != "HEAD":
            assert refused.json()["error"]["type"] == "invalid_request_error"
    options = httpx.options(f"{live.url}/v1/audio/speech", timeout=30)
    assert options.status_code == 204 and options.headers["allow"] == "OPTIONS, POST"
    assert httpx.options(f"{live.url}/v1/voices/someone", timeout=30).headers["allow"] == "DELETE, OPTIONS, PATCH"
    assert httpx.options(f"{live.url}/v1/nothing", timeout=30).status_code == 404
    # No CORS unless the operator asks for it.
    plain = httpx.get(f"{live.url}/v1/models", headers={"Origin": "https://chat.example.com"}, timeout=30)
    assert "access-control-allow-origin" not in plain.headers


def test_cors_for_the_origins_given(tmp_path, tiny_bundle_dir):
    from dia2.api_server import build_app

    server = LiveServer(build_app(server_options(tmp_path / "voices", "--cors-origin", "https://chat.example.com",
                                                 "--cors-origin", "http://localhost:3000")))
    try:
        preflight = httpx.options(f"{server.url}/v1/audio/speech", timeout=30, headers={
            "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        got = httpx.get(f"{server.url}/v1/models", headers={"Origin": "https://chat.example.com"}, timeout=30)
        assert got.headers["access-control-allow-origin"] == "https://chat.example.com"
        other = httpx.get(f"{server.url}/v1/models", headers={"Origin": "https://evil.example.com"}, timeout=30)
        assert "access-control-allow-origin" not in other.headers
    finally:
        server.stop()


def metric(url: str, name: str) -> float:
    """A sample's value in /metrics (0 if absent)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_metrics_count_refusals_cancellations_failures_and_queue_waits(live, monkeypatch):
    url, port = live.url, live.port
    before = {o: metric(url, f'dia2_requests_total{{outcome="{o}"}}') for o in ("refused", "cancelled", "failed")}
    waits_before = metric(url, "dia2_queue_wait_seconds_count")
    # Two slots and two queue places taken, one more refused; then all of them give up.
    socks = [open_request(port, "/v1/audio/speech", speech_body(ENDLESS, seed=i), KEY) for i in range(4)]
    try:
        assert wait_for(url, busy=2, queued=2)["queued"] == 2
        refused = httpx.post(f"{url}/v1/audio/speech", json=speech_body(SHORT), headers=auth_header(), timeout=30)
        assert refused.status_code == 429 and refused.headers["retry-after"]
    finally:
        for sock in socks:
            close(sock)
    state = wait_for(url, seconds=10, busy=0, queued=0)
    assert (state["busy"], state["queued"]) == (0, 0), state
    # A generation that fails on the server.
    engine = live.app.state.engine

    def broken(job):
        raise RuntimeError("a planted failure")

    monkeypatch.setattr(engine, "_utterance", broken)
    failed = httpx.post(f"{url}/v1/audio/speech", json=speech_body(SHORT), headers=auth_header(), timeout=60)
    assert api_error(failed, 500)["type"] == "server_error"
    monkeypatch.undo()
    deadline = time.time() + 10
    while metric(url, 'dia2_requests_total{outcome="cancelled"}') < before["cancelled"] + 4 and time.time() < deadline:
        time.sleep(0.1)
    assert metric(url, 'dia2_requests_total{outcome="refused"}') == before["refused"] + 1
    assert metric(url, 'dia2_requests_total{outcome="cancelled"}') == before["cancelled"] + 4
    assert metric(url, 'dia2_requests_total{outcome="failed"}') == before["failed"] + 1
    assert metric(url, 'dia2_errors_total{status="429"}') >= 1 and metric(url, 'dia2_errors_total{status="500"}') >= 1
    assert metric(url, "dia2_queue_wait_seconds_count") >= waits_before + 3  # the two that held slots, and the failed one
