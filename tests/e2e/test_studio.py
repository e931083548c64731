"""The studio (gradio_app.py) driven through `gradio_client` over a loopback socket, as a page
would drive it: speak (streamed, then whole, with word times), make / list / play / delete voices
in the server's voices folder, data prep + a few training steps in the background with a cancel,
and compare configurations. Bad inputs must come back as messages, never tracebacks.

One studio serves every test (and the browser tests: `live_studio`), on the tiny model with a
short frame limit and the shipped tiny.en Whisper.
"""

from __future__ import annotations

import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "audio"
SHORT = "[S1] Hello there. [S2] Hi!"
NONE, RECORDING = "(none)", "(the recording below)"
QUIET_TRAINING = "eval.scripts=[] eval.at_start=false output.save_every=0"


@dataclass
class LiveStudio:
    url: str
    demo: object
    voices: Path
    work: Path

    @property
    def studio(self):
        return self.demo.studio

    def client(self) -> Client:
        return Client(self.url, verbose=False)


_LIVE: dict[str, LiveStudio] = {}


def live_studio(request, tmp_path_factory, bundle: Path, whisper: str) -> LiveStudio:
    """The one studio of this test session, started on first use and closed at the session's end."""
    if "studio" in _LIVE:
        return _LIVE["studio"]
    from dia2.studio.app import build_app, build_parser, launch, parse_options

    root = tmp_path_factory.mktemp("studio")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["--hf", str(bundle), "--device", "cpu", "--voices", str(root / "voices"), "--work", str(root / "work"),
            "--whisper-model", whisper, "--max-frames", "40", "--slots", "4", "--port", str(port)]
    options = parse_options(build_parser(), argv)
    demo = build_app(options, scorer=_scorer(whisper))
    launch(demo, options, prevent_thread_lock=True)
    _LIVE["studio"] = LiveStudio(f"http://127.0.0.1:{port}/", demo, root / "voices", root / "work")

    def close() -> None:
        demo.close()
        demo.studio.engine.stop()

    request.config.add_cleanup(close)
    return _LIVE["studio"]


def _scorer(whisper: str):
    """The evaluation's clip scorer with the shipped tiny.en Whisper and no speaker encoder (None
    while dia2.evaluation does not exist: Compare then shows outputs without scores)."""
    try:
        from dia2.evaluation import ClipScorer
    except ImportError:
        return None
    return lambda references: ClipScorer(list(references) or None, asr=whisper, speaker=None)


@pytest.fixture(scope="module")
def live(request, tmp_path_factory, tiny_bundle_dir, tiny_en) -> LiveStudio:
    return live_studio(request, tmp_path_factory, tiny_bundle_dir, tiny_en)


@pytest.fixture(scope="module")
def client(live) -> Client:
    return live.client()


@pytest.fixture(scope="module")
def base(client) -> np.ndarray:
    """SHORT spoken with seed 3 and no voice or adapter: what the other configurations differ from."""
    return read_wav(speak(client).result()[2])


def speak(client: Client, script: str = SHORT, voice_1: str = NONE, recording_1=None, voice_2: str = NONE,
          recording_2=None, adapter: str = NONE, seed: str = "3"):
    return client.submit(script, voice_1, recording_1, voice_2, recording_2, adapter, 2.0, 0.8, 50, seed,
                         api_name="/speak")


def read_wav(path: str) -> np.ndarray:
    wave, rate = sf.read(path, dtype="float32")
    assert rate == 24000
    return wave


def message(call) -> str:
    """The message a page would show for a call that must fail."""
    with pytest.raises(AppError) as info:
        call()
    text = str(info.value)
    assert "Traceback" not in text
    return text


# --- Speak -------------------------------------------------------------------------------------


def test_speak_streams_then_gives_the_file_and_word_times(client, base):
    job = speak(client)
    outputs = list(job)
    _, player, full, table, status = job.result()
    if shutil.which("ffmpeg"):
        pieces = [o[0] for o in outputs[:-1] if o[0]]
        assert pieces, "audio plays while it is generated"
        assert any(s.startswith("speaking") for *_, s in outputs[:-1])
    else:
        assert "install ffmpeg" in status
    wave = read_wav(full)
    assert player.startswith("<audio controls") and Path(full).name in player
    assert [w for w, _ in table["data"]] == ["Hello", "there.", "Hi!"]
    starts = [t for _, t in table["data"]]
    assert starts == sorted(starts) and 0 <= starts[-1] < len(wave) / 24000
    assert status.startswith("done") and np.abs(wave).max() > 0
    # One seed, one audio: the same request again gives the same samples; another seed does not.
    other = read_wav(speak(client, seed="4").result()[2])
    assert np.array_equal(wave, base) and not (len(other) == len(wave) and np.array_equal(other, wave))


def test_bad_speak_inputs_come_back_as_messages(client, tmp_path):
    assert "script is empty" in message(lambda: speak(client, script="  ").result())
    assert "unknown tag '[S3]'" in message(lambda: speak(client, script="[S1] Hi. [S3] Who?").result())
    assert "seed 'abc' is not a whole number" in message(lambda: speak(client, seed="abc").result())
    assert "speaker 1 recording: no recording" in message(lambda: speak(client, voice_1=RECORDING).result())
    not_audio = tmp_path / "notes.wav"
    not_audio.write_bytes(b"RIFF this is no audio")
    text = message(lambda: speak(client, voice_1=RECORDING, recording_1=handle_file(str(not_audio))).result())
    assert "cannot be decoded as audio" in text
    voice = handle_file(str(FIXTURES / "voice_a.flac"))
    text = message(lambda: speak(client, voice_2=RECORDING, recording_2=voice).result())
    assert "give speaker 1 a voice too" in text
    assert "no voice named 'nobody'" in message(lambda: speak(client, adapter="nobody").result())


def test_a_recording_uploaded_in_speak_is_the_speakers_voice(client, base):
    recorded = speak(client, voice_1=RECORDING, recording_1=handle_file(str(FIXTURES / "voice_a.flac")))
    assert not np.array_equal(read_wav(recorded.result()[2]), base)


# --- Voices ------------------------------------------------------------------------------------


def test_make_a_voice_correct_its_transcript_use_and_delete_it(client, live, base):
    from dia2.serving.voices import VoiceStore

    upload = handle_file(str(FIXTURES / "voice_b.flac"))
    heard, note = client.predict(upload, api_name="/transcribe_voice")
    words = heard.split()
    assert len(words) >= 4 and "word(s)" in note  # "Hello there, how are you doing today?" give or take a word
    corrected = " ".join(["Howdy", *words[1:]])
    saved = client.predict("bea", upload, corrected, False, api_name="/save_voice")
    assert saved.startswith("voice 'bea' saved: Howdy")
    # The server's store on the same folder has it, with the corrected words.
    stored = VoiceStore(live.voices, lambda *a, **k: None).get("bea")
    assert stored.voice is not None and stored.voice.words[0].text == "Howdy" and stored.transcript == corrected
    table, *_ = client.predict(api_name="/list_voices")
    assert ["bea", "recording", 1, corrected] in table["data"]
    assert Path(client.predict("bea", api_name="/play_voice")).read_bytes() == (FIXTURES / "voice_b.flac").read_bytes()
    with_voice = read_wav(speak(client, voice_1="bea").result()[2])
    assert not np.array_equal(with_voice, base)
    # A stored voice for speaker 1 and a recording for speaker 2 make one prefix of both.
    dialogue = speak(client, voice_1="bea", voice_2=RECORDING, recording_2=handle_file(str(FIXTURES / "voice_a.flac")))
    assert not np.array_equal(read_wav(dialogue.result()[2]), with_voice)
    assert "exists already" in message(lambda: client.predict("bea", upload, "", False, api_name="/save_voice"))
    assert client.predict("bea", api_name="/delete_voice") == "voice 'bea' deleted"
    assert "no voice named 'bea'" in message(lambda: speak(client, voice_1="bea").result())
    assert not (live.voices / "bea").exists()


def test_bad_voice_uploads_come_back_as_messages(client, tmp_path):
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(48000, np.float32), 24000)
    short = tmp_path / "short.wav"
    sf.write(short, 0.1 * np.random.default_rng(0).standard_normal(4800).astype(np.float32), 24000)
    voice = handle_file(str(FIXTURES / "voice_a.flac"))
    assert "is silent" in message(lambda: client.predict(handle_file(str(silent)), api_name="/transcribe_voice"))
    assert "must be 1 to 30 s" in message(lambda: client.predict("s", handle_file(str(short)), "", False,
                                                                  api_name="/save_voice"))
    assert "no recording" in message(lambda: client.predict("x", None, "", False, api_name="/save_voice"))
    assert "give the voice a name" in message(lambda: client.predict("", voice, "", False, api_name="/save_voice"))
    assert "holds a path" in message(lambda: client.predict("../up", voice, "", False, api_name="/save_voice"))


# --- Adapt -------------------------------------------------------------------------------------


def wait_for(client: Client, job_id: str, timeout: float = 300) -> tuple:
    """Poll the job as the page's timer does until it has ended and the studio has acted on it."""
    deadline = time.monotonic() + timeout
    while True:
        view = client.predict(job_id, api_name="/job_status")
        status = view[0]
        if "result:" in status:
            return view
        assert time.monotonic() < deadline, f"job {job_id} did not end: {view[0]}\n{view[3]}"
        time.sleep(1.0)


@pytest.fixture(scope="module")
def adapted(client, live) -> dict:
    """Recordings -> data prep -> 3 training steps, through the Adapt tab's functions."""
    files = [handle_file(str(FIXTURES / n)) for n in ("voice_a.flac", "voice_b.flac")]
    prep_id = client.predict("espeak", files, "", api_name="/prepare")
    prep = wait_for(client, prep_id)
    train_id = client.predict("espeak", "tiny-cpu.yaml", 3, "espeak-lora", QUIET_TRAINING, api_name="/train")
    train = wait_for(client, train_id)
    return {"prep_id": prep_id, "prep": prep, "train_id": train_id, "train": train, "name": "espeak-lora"}


def test_prep_and_training_run_in_the_background_and_make_an_adapter_voice(adapted, client, live, base):
    from dia2.serving.voices import VoiceStore

    status, _, qc, log = adapted["prep"]
    assert "(done)" in status and "progress: 2/2 recording(s)" in status and "kept" in status
    assert "utterances" in qc.lower() and "recordings:" in log
    status, loss, _, _ = adapted["train"]
    assert "(done)" in status and "progress: 3/3 step(s)" in status and "adapter voice 'espeak-lora' added" in status
    rows = loss["value"]["data"] if "value" in loss else loss["data"]
    assert len(rows) == 3
    # The server's store has the adapter voice; Speak uses it, and it changes the audio.
    stored = VoiceStore(live.voices, lambda *a, **k: None).get("espeak-lora")
    assert stored.adapter == str((live.work / "runs" / "espeak-lora" / "adapter").resolve())
    assert not np.array_equal(read_wav(speak(client, adapter="espeak-lora").result()[2]), base)


def test_a_reload_or_a_restart_finds_the_jobs_as_they_ended(adapted, live):
    from dia2.studio.jobs import JobStore

    fresh = live.client()  # a new page
    assert "(done)" in fresh.predict(adapted["train_id"], api_name="/job_status")[0]
    ended: list[str] = []
    store = JobStore(live.work / "jobs", on_end=lambda job: ended.append(job.id) or "")  # a studio started again
    statuses = {j.id: j.status for j in store.list()}
    assert statuses[adapted["prep_id"]] == statuses[adapted["train_id"]] == "done"
    assert ended == [], "an ended job is acted on once, not again at every start"


def test_a_job_outlives_the_studio_that_started_it(tmp_path):
    """A studio that exits (or crashes) leaves its jobs running; the next one adopts, shows and cancels them."""
    import subprocess
    import sys

    from dia2.studio.jobs import JobStore

    command = [sys.executable, "-c", "import time; print('working', flush=True); time.sleep(60)"]
    start = f"from dia2.studio.jobs import JobStore; print(JobStore({str(tmp_path)!r}).start('demo', 'sleep', {command!r}).id)"
    job_id = subprocess.run([sys.executable, "-c", start], capture_output=True, text=True, check=True).stdout.strip()
    ended: list[str] = []
    store = JobStore(tmp_path, on_end=lambda job: ended.append(job.status) or "acted on")  # the studio started again
    assert store.get(job_id).status == "running"
    deadline = time.monotonic() + 30
    while "working" not in store.get(job_id).log_tail() and time.monotonic() < deadline:
        time.sleep(0.2)  # its output reaches the page while it runs
    assert "working" in store.get(job_id).log_tail()
    store.cancel(job_id)
    job = store.wait(job_id, timeout=30)
    assert job.status == "cancelled" and job.note == "acted on" and ended == ["cancelled"]


def test_a_job_can_be_cancelled(adapted, client, live):
    job_id = client.predict("espeak", "tiny-cpu.yaml", 500, "long-run", QUIET_TRAINING, api_name="/train")
    assert client.predict(job_id, api_name="/cancel") == job_id
    status = wait_for(client, job_id, timeout=60)[0]
    assert "(cancelled)" in status
    assert "long-run" not in live.studio.adapter_voices()
    assert "is not running" in message(lambda: client.predict(job_id, api_name="/cancel"))


def test_bad_adapt_inputs_come_back_as_messages(client, adapted):
    assert "no recordings" in message(lambda: client.predict("c", [], "", api_name="/prepare"))
    assert "does not exist on this machine" in message(lambda: client.predict("c", [], "/no/such/folder",
                                                                              api_name="/prepare"))
    assert "choose a prepared corpus" in message(lambda: client.predict("nope", "tiny-cpu.yaml", 3, "x", "",
                                                                         api_name="/train"))
    assert "a run named 'espeak-lora' exists" in message(lambda: client.predict("espeak", "tiny-cpu.yaml", 3,
                                                                                 "espeak-lora", "", api_name="/train"))
    assert "write key=value items" in message(lambda: client.predict("espeak", "tiny-cpu.yaml", 3, "y", "lr",
                                                                      api_name="/train"))


# --- Compare -----------------------------------------------------------------------------------


def test_compare_speaks_every_configuration_with_one_seed(adapted, client):
    upload = handle_file(str(FIXTURES / "voice_a.flac"))
    client.predict("cmp", upload, "", True, api_name="/save_voice")
    configurations = ["base", "prefix", "adapter", "adapter + prefix"]
    *paths, scores, status = client.predict(SHORT, "5", "cmp", adapted["name"], configurations, api_name="/compare")
    waves = [read_wav(p) for p in paths]
    assert all(len(w) > 0 for w in waves) and "seed 5" in status
    for i in range(4):
        for j in range(i + 1, 4):
            assert not (len(waves[i]) == len(waves[j]) and np.array_equal(waves[i], waves[j])), (i, j)
    rows = scores["data"]
    assert [r[0] for r in rows] == configurations and all(r[1] > 0 for r in rows)
    if _scorer("unused") is not None:
        assert all(r[2] is not None for r in rows), "the evaluation's WER for each configuration"
    else:
        assert "scores need dia2.evaluation" in status
    # Alone, the base configuration is what Speak gives for the same seed and settings (Speak decodes
    # as it streams, Compare at the end: the same codes, up to float rounding of the two decodes).
    *paths, _, _ = client.predict(SHORT, "5", NONE, NONE, ["base"], api_name="/compare")
    alone, spoken = read_wav(paths[0]), read_wav(speak(client, seed="5").result()[2])
    assert paths[1:] == [None, None, None] and len(alone) == len(spoken)
    assert np.allclose(alone, spoken, atol=1e-3)
    assert "need a voice" in message(lambda: client.predict(SHORT, "5", NONE, NONE, ["prefix"], api_name="/compare"))
    assert "give a seed" in message(lambda: client.predict(SHORT, "", NONE, NONE, ["base"], api_name="/compare"))


def test_the_command_line_refuses_bad_options(capsys):
    from dia2.studio.app import main

    for argv, text in ((["--tiny", "--hf", "x"], "--tiny is --hf tiny"), (["--adapter", "novalue"], "NAME=PATH"),
                       (["--port", "0"], "--port 0")):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2 and text in capsys.readouterr().err

