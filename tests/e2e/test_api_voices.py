"""Stored voices through the speech server over loopback sockets (issue 24): defaults a voice
keeps (seed, cfg, temperature, top-k), files dropped into the folder while it runs, a server
without Whisper, an unreachable Hub, and the names OpenAI reserves."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from tests.helpers.servers import FIXTURES, SHORT, LiveServer, api_error, server_options

pytest.importorskip("uvicorn")

TRANSCRIPT_A = "The quick brown fox jumps over the lazy dog."  # what voice_a.flac says (espeak-ng)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("voices")


@pytest.fixture(scope="module")
def live(folder, tiny_bundle_dir):
    """A server whose Whisper model is missing, with short generations and a short Hub deadline."""
    from dia2.api_server import build_app

    missing = folder.parent / "no-whisper-here"
    server = LiveServer(build_app(server_options(folder, "--whisper-model", str(missing), "--hub-timeout", "1",
                                                 "--max-frames", "40")))
    yield server
    server.stop()


def upload(url: str, name: str, fields: dict | None = None, fixture: str = "voice_a") -> httpx.Response:
    files = {"file": (f"{fixture}.flac", (FIXTURES / f"{fixture}.flac").read_bytes(), "audio/flac")}
    return httpx.post(f"{url}/v1/voices", data={"name": name, **(fields or {})}, files=files, timeout=120)


def speak(url: str, voice: str, **settings) -> bytes:
    body = {"model": "tts-1", "voice": voice, "input": SHORT, "response_format": "pcm", **settings}
    response = httpx.post(f"{url}/v1/audio/speech", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.content


def test_without_whisper_uploads_that_need_it_get_503_and_a_transcript_is_enough(live, folder):
    whisper = httpx.get(f"{live.url}/health", timeout=30).json()["whisper"]
    assert whisper["status"] == "unavailable" and "no-whisper-here" in whisper["model"] and whisper["error"]
    refused = api_error(upload(live.url, "heard"), 503)
    assert refused["type"] == "server_error" and "transcript" in refused["message"] and "no-whisper-here" in refused["message"]
    created = upload(live.url, "typed", {"transcript": TRANSCRIPT_A})
    assert created.status_code == 201, created.text
    assert created.json()["transcript"] == TRANSCRIPT_A
    # The typed words, timed from the speech in the recording (3.44 s long): in order, inside it.
    words = json.loads((folder / "typed" / "voice.json").read_text())["prefix"]["words"]
    assert [w["text"] for w in words] == TRANSCRIPT_A.split()
    starts = [w["start"] for w in words]
    assert starts == sorted(starts) and words[-1]["end"] <= 3.5 and words[-1]["start"] > 2.0
    assert len(speak(live.url, "typed", seed=1)) > 0


def test_a_voice_keeps_its_defaults_and_a_request_overrides_them(live):
    created = upload(live.url, "pinned", {"transcript": TRANSCRIPT_A, "seed": "11", "temperature": "0.7"})
    assert created.status_code == 201, created.text
    assert created.json()["defaults"] == {"seed": 11, "cfg": None, "temperature": 0.7, "top_k": None}
    pinned = speak(live.url, "pinned")
    assert speak(live.url, "pinned") == pinned, "a voice with a seed sounds the same on every request"
    assert speak(live.url, "pinned", seed=11, temperature=0.7) == pinned
    assert speak(live.url, "pinned", seed=12) != pinned, "the request's seed wins"
    # Changed with a PATCH: what the voice now does equals asking for those settings outright.
    changed = httpx.patch(f"{live.url}/v1/voices/pinned", json={"seed": 12, "cfg": 1.5}, timeout=30)
    assert changed.status_code == 200, changed.text
    assert changed.json()["defaults"] == {"seed": 12, "cfg": 1.5, "temperature": 0.7, "top_k": None}
    assert speak(live.url, "pinned") == speak(live.url, "pinned", seed=12, cfg=1.5, temperature=0.7)
    listed = {v["id"]: v for v in httpx.get(f"{live.url}/v1/voices", timeout=30).json()["voices"]}
    assert listed["pinned"]["defaults"]["seed"] == 12 and listed["alloy"]["defaults"]["seed"] is not None
    assert speak(live.url, "alloy") == speak(live.url, "alloy"), "OpenAI's names keep their fixed seeds"
    # Refused with the field named: a bad value, an unknown setting, a builtin voice, a missing voice.
    assert api_error(httpx.patch(f"{live.url}/v1/voices/pinned", json={"top_k": -1}, timeout=30), 400)["param"] == "top_k"
    assert api_error(httpx.patch(f"{live.url}/v1/voices/pinned", json={"speed": 2}, timeout=30), 400)["param"] == "speed"
    assert "fixed seed" in api_error(httpx.patch(f"{live.url}/v1/voices/alloy", json={"seed": 1}, timeout=30), 400)["message"]
    api_error(httpx.patch(f"{live.url}/v1/voices/nobody", json={"seed": 1}, timeout=30), 404)
    assert api_error(upload(live.url, "bad", {"transcript": "x", "cfg": "0"}), 400)["param"] == "cfg"


def test_a_file_dropped_into_the_folder_becomes_a_voice_while_serving(live, folder):
    (folder / "late.txt").write_text(TRANSCRIPT_A)
    (folder / "late.flac").write_bytes((FIXTURES / "voice_a.flac").read_bytes())
    deadline = time.time() + 30
    while "late" not in {v["id"] for v in httpx.get(f"{live.url}/v1/audio/voices", timeout=30).json()["voices"]}:
        assert time.time() < deadline, "the dropped-in file never became a voice"
        time.sleep(0.2)
    assert not (folder / "late.flac").exists() and (folder / "late" / "transcript.txt").read_text() == TRANSCRIPT_A
    assert len(speak(live.url, "late", seed=1)) > 0


def test_a_trained_runs_adapter_folder_moved_into_the_folder_is_served_as_a_voice(live, folder, tmp_path):
    """A finished run's adapter folder is a voice (issue 25): moved into the voices folder while the
    server runs, it is served with its adapter and its default seed."""
    from dia2.generation.voice import Voice, VoiceDefaults, write_voice
    from tests.helpers.adapters import save_random_adapter

    adapter = save_random_adapter(tmp_path / "runs" / "me" / "adapter")
    write_voice(Voice(adapter=str(adapter), defaults=VoiceDefaults(seed=5), run={"base_model": "tiny"}), adapter)
    adapter.rename(folder / "trained")  # on one filesystem a move is one rename: never seen half copied
    assert "trained" in {v["id"] for v in httpx.get(f"{live.url}/v1/audio/voices", timeout=30).json()["voices"]}
    listed = {v["id"]: v for v in httpx.get(f"{live.url}/v1/voices", timeout=30).json()["voices"]}
    assert (listed["trained"]["adapter"], listed["trained"]["prefix"], listed["trained"]["defaults"]["seed"]) == (True, False, 5)
    trained = speak(live.url, "trained")
    assert trained == speak(live.url, "trained", seed=5), "the voice's seed is its default"
    assert trained != speak(live.url, "alloy", seed=5), "the adapter is applied (alloy: the base, no prefix)"


def test_a_voice_dia2_infer_saves_into_the_folder_is_served_as_it_spoke(live, folder, tiny_en, tiny_cache, tmp_path,
                                                                        monkeypatch):
    """`dia2-infer --save-voice voices/NAME` while the server runs (issue 25): the server lists the
    voice with its prefix and defaults, and the official OpenAI client gets the audio dia2-infer
    spoke with it (its prefix, its seed and CFG, the same frame limit)."""
    import numpy as np
    import soundfile as sf

    from dia2.cli import main as infer

    monkeypatch.setenv("DIA2_CACHE", str(tiny_cache))  # --tiny: the session's tiny bundle, as the server's
    take = tmp_path / "take.wav"
    assert infer(["--tiny", "--text", SHORT, "--max-frames", "40", "--prefix-speaker-1", str(FIXTURES / "voice_a.flac"),
                  "--prefix-transcript", TRANSCRIPT_A, "--whisper-model", tiny_en, "--seed", "11", "--cfg", "2.5",
                  "--save-voice", str(folder / "from-cli"), str(take)]) == 0
    listed = {v["id"]: v for v in httpx.get(f"{live.url}/v1/voices", timeout=30).json()["voices"]}
    mine = listed["from-cli"]
    assert (mine["prefix"], mine["adapter"], mine["transcript"]) == (True, False, TRANSCRIPT_A)
    assert (mine["defaults"]["seed"], mine["defaults"]["cfg"]) == (11, 2.5)
    spoken = live.client().audio.speech.create(model="tts-1", voice="from-cli", input=SHORT, response_format="pcm")
    served = np.frombuffer(spoken.content, dtype="<i2")
    said = sf.read(str(take), dtype="int16")[0]
    assert len(served) == len(said) and np.abs(served.astype(int) - said).max() <= 1  # 16-bit rounding
    other = np.frombuffer(live.client().audio.speech.create(
        model="tts-1", voice="from-cli", input=SHORT, response_format="pcm", extra_body={"seed": 12}).content, "<i2")
    assert not np.array_equal(other, served), "the voice's seed is what made the take"


def test_an_openai_voice_name_is_reserved_from_the_first_answer(live):
    for fields in ({"transcript": TRANSCRIPT_A}, {"transcript": TRANSCRIPT_A, "replace": "true"}):
        error = api_error(upload(live.url, "alloy", fields), 400)
        assert "reserved" in error["message"] and error["param"] == "name"


def test_upload_errors_name_the_part_at_fault(live):
    noise = httpx.post(f"{live.url}/v1/voices", data={"name": "noise", "transcript": "x"},
                       files={"file": ("x.wav", b"RIFF not really audio", "audio/wav")}, timeout=60)
    assert api_error(noise, 400)["param"] == "file"
    second = httpx.post(f"{live.url}/v1/voices", data={"name": "duo", "transcript": "x"}, timeout=60, files={
        "file": ("a.flac", (FIXTURES / "voice_a.flac").read_bytes(), "audio/flac"),
        "speaker_2": ("b.wav", b"RIFF not really audio", "audio/wav")})
    assert api_error(second, 400)["param"] == "speaker_2"
    assert api_error(upload(live.url, "../evil", {"transcript": "x"}), 400)["param"] == "name"
    # An adapter must be a Hub repo id by the Hub's own rules (one check: dia2.model.assets), refused
    # before the Hub is asked.
    bad_repo = httpx.post(f"{live.url}/v1/voices", data={"name": "remote", "adapter": "someone/bad--name"}, timeout=60)
    assert api_error(bad_repo, 400)["param"] == "adapter" and "Hub repo id" in api_error(bad_repo, 400)["message"]


def test_a_hub_that_does_not_answer_gets_a_504_within_the_deadline(live, monkeypatch, tmp_path):
    from huggingface_hub import constants

    silent = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    try:
        started = time.perf_counter()
        response = httpx.post(f"{live.url}/v1/voices", data={"name": "remote", "adapter": "someone/a-lora"}, timeout=60)
        elapsed = time.perf_counter() - started
        error = api_error(response, 504)
        assert error["type"] == "server_error" and error["param"] == "adapter" and "someone/a-lora" in error["message"]
        assert elapsed < 10, elapsed  # --hub-timeout 1; the Hub client alone retries for minutes
        assert "remote" not in {v["id"] for v in httpx.get(f"{live.url}/v1/voices", timeout=30).json()["voices"]}
    finally:
        silent.close()
