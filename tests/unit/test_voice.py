"""A voice (prefix and/or adapter, with default settings) in its one folder format; and every
layout written before that format, which still reads (fixtures written by the old writers)."""

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from dia2.generation.config import GenerationConfig
from dia2.generation.prefix import VoicePrefix
from dia2.generation.voice import Voice, VoiceDefaults, VoiceError, read_voice, voice_file, write_voice
from dia2.text.words import SpokenWord
from tests.helpers.old_voice_layouts import old_run_adapter, old_save_voice, old_server_voice, peft_files

WORDS = (SpokenWord("hello", 0.3, 0.6, 1, 0.75), SpokenWord("there", 1.6, 1.9, 2, 0.5))
RUN = {"base_model": "tiny", "speakers": {"S1": ["me"]}, "training": {"steps": 4}, "consent": "I agreed.",
       "samples": [{"file": "samples/step_000004/sample_0.wav", "script": "[S1] Hi."}], "license": "cc-by-4.0"}


def _prefix(frames: int = 30, speaker_2_frame: int | None = 19) -> VoicePrefix:
    codes = torch.from_numpy(np.random.default_rng(0).integers(0, 2048, (8, frames)))
    return VoicePrefix(codes, WORDS, "mimi-fingerprint", speaker_2_frame)


def _same_prefix(a: VoicePrefix, b: VoicePrefix) -> bool:
    return (torch.equal(a.codes, b.codes) and a.words == b.words and a.codec_fingerprint == b.codec_fingerprint
            and a.speaker_2_frame == b.speaker_2_frame)


# --- the one format ------------------------------------------------------------------------------


def test_a_voice_with_everything_round_trips_through_its_folder(tmp_path):
    adapter = peft_files(tmp_path / "lora")
    voice = Voice(prefix=_prefix(), adapter=str(adapter), defaults=VoiceDefaults(seed=7, cfg=3.0, top_k=20),
                  transcript="[S1] Hello. [S2] There.", created="2026-12-09T10:00:00+00:00", run=RUN)
    folder = write_voice(voice, tmp_path / "me")
    assert sorted(p.name for p in folder.iterdir()) == ["codes.npy", "voice.json"]
    record = json.loads((folder / "voice.json").read_text())
    assert record["format"] == "dia2-voice/2" and record["adapter"] == str(adapter)
    assert record["defaults"] == {"seed": 7, "cfg": 3.0, "temperature": None, "top_k": 20}
    assert record["prefix"]["speaker_2_frame"] == 19 and record["prefix"]["words"][1]["text"] == "there"
    loaded = read_voice(folder)
    assert _same_prefix(loaded.prefix, voice.prefix)
    assert dataclasses.replace(loaded, prefix=None) == dataclasses.replace(voice, prefix=None)
    assert (loaded.speakers, loaded.text) == (2, "[S1] Hello. [S2] There.")
    assert voice_file(folder) == folder / "voice.json"


def test_an_adapter_folder_that_is_the_voice_is_named_dot_and_moves_with_it(tmp_path):
    folder = peft_files(tmp_path / "runs" / "me" / "adapter")
    write_voice(Voice(adapter=str(folder), run=RUN), folder)
    assert json.loads((folder / "voice.json").read_text())["adapter"] == "."
    moved = shutil.copytree(folder, tmp_path / "voices" / "me")
    voice = read_voice(moved)
    assert voice.adapter == str(moved.resolve()) and voice.run == RUN and voice.prefix is None
    assert (voice.speakers, voice.text) == (0, "")
    # A relative path in voice.json is relative to the voice folder, not to where a reader runs.
    record = json.loads((moved / "voice.json").read_text())
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "voice.json").write_text(json.dumps({**record, "adapter": "../voices/me"}))
    assert read_voice(tmp_path / "other").adapter == str(moved.resolve())


def test_a_local_adapter_is_stored_by_its_absolute_path_and_a_hub_id_as_given(tmp_path, monkeypatch):
    peft_files(tmp_path / "runs" / "me" / "adapter")
    monkeypatch.chdir(tmp_path)
    write_voice(Voice(adapter="runs/me/adapter"), tmp_path / "a")
    write_voice(Voice(adapter="someone/voice-lora"), tmp_path / "b")
    monkeypatch.chdir("/")
    assert read_voice(tmp_path / "a").adapter == str(tmp_path / "runs" / "me" / "adapter")
    assert read_voice(tmp_path / "b").adapter == "someone/voice-lora"


def test_settings_go_flag_over_voice_over_defaults():
    base = GenerationConfig()
    voice = VoiceDefaults(seed=5, temperature=0.5)
    config = voice.over(base)
    assert (config.seed, config.audio.temperature, config.cfg_scale, config.audio.top_k) == (5, 0.5, base.cfg_scale, 50)
    flags = VoiceDefaults(seed=9, cfg=4.0)
    config = flags.over(voice.over(base))
    assert (config.seed, config.audio.temperature, config.cfg_scale) == (9, 0.5, 4.0)
    # What a run keeps as a voice's defaults: only what differs from the defaults, so it speaks the same again.
    kept = VoiceDefaults.of(config, base)
    assert kept == VoiceDefaults(seed=9, cfg=4.0, temperature=0.5) and kept.over(base) == config


def test_reading_a_voice_without_a_prefix_does_not_import_torch(tmp_path):
    folder = peft_files(tmp_path / "adapter")
    write_voice(Voice(adapter=str(folder), defaults=VoiceDefaults(seed=1), run=RUN), folder)
    code = ("import sys; from dia2.generation.voice import read_voice; "
            f"v = read_voice({str(folder)!r}); print(v.defaults.seed, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1", "False"]


# --- every layout before the one format still reads ---------------------------------------------


def test_a_save_voice_folder_from_before_reads_as_a_prefix_voice(tmp_path):
    prefix = _prefix()
    folder = old_save_voice(prefix, tmp_path / "old")
    voice = read_voice(folder)
    assert _same_prefix(voice.prefix, prefix)
    assert (voice.adapter, voice.defaults, voice.transcript, voice.run) == (None, VoiceDefaults(), None, None)


def test_a_server_voice_folder_from_before_reads_with_its_adapter_defaults_and_transcript(tmp_path):
    prefix = _prefix()
    folder = old_server_voice(tmp_path / "bob", prefix, "someone/bob-lora", {"seed": 5, "temperature": 0.7}, "Hi there.")
    voice = read_voice(folder)
    assert _same_prefix(voice.prefix, prefix)
    assert (voice.adapter, voice.defaults) == ("someone/bob-lora", VoiceDefaults(seed=5, temperature=0.7))
    assert (voice.transcript, voice.created, voice.speakers) == ("Hi there.", "2026-12-01T10:00:00+00:00", 2)
    only_adapter = read_voice(old_server_voice(tmp_path / "narrator", None, str(tmp_path / "lora"), {"cfg": 3}, None))
    assert (only_adapter.prefix, only_adapter.adapter, only_adapter.defaults) == (
        None, str(tmp_path / "lora"), VoiceDefaults(cfg=3.0))
    assert voice_file(tmp_path / "narrator") == tmp_path / "narrator" / "meta.json"


def test_a_runs_adapter_folder_from_before_reads_as_an_adapter_voice_with_its_record(tmp_path):
    folder = old_run_adapter(tmp_path / "runs" / "me" / "adapter", RUN)
    voice = read_voice(folder)
    assert voice == Voice(adapter=str(folder.resolve()), run=RUN)
    assert voice_file(folder) == folder / "dia2_voice.json"
    # Any PEFT folder is a voice too: that adapter, no prefix, no defaults.
    plain = read_voice(peft_files(tmp_path / "plain"))
    assert plain == Voice(adapter=str((tmp_path / "plain").resolve()))


GOOD_RECORD = {"format": "dia2-voice/2", "prefix": None, "transcript": None, "adapter": None,
               "defaults": {}, "created": None, "run": None}


def _with_prefix(folder, **prefix) -> None:
    """A voice.json whose prefix has WORDS[0] (or what `prefix` says) and a codes.npy of 8 x 30 codes."""
    np.save(folder / "codes.npy", np.zeros((8, 30), np.int16))
    record = {"codec_fingerprint": None, "speaker_2_frame": None, "words": [dataclasses.asdict(WORDS[0])], **prefix}
    (folder / "voice.json").write_text(json.dumps({**GOOD_RECORD, "prefix": record}))


def _damage(folder, layout: str) -> None:
    """Make `folder` (an empty folder) into the broken voice folder `layout` names."""
    word = dataclasses.asdict(WORDS[0])
    if layout == "run folder":
        peft_files(folder / "adapter")
    elif layout == "full model":
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(b"")
        (folder / "voice.json").write_text(json.dumps({**GOOD_RECORD, "run": RUN}))
    elif layout == "newer format":
        (folder / "voice.json").write_text(json.dumps({**GOOD_RECORD, "format": "dia2-voice/9"}))
    elif layout == "bad defaults":
        (folder / "voice.json").write_text(json.dumps({**GOOD_RECORD, "defaults": {"cfg": -1}}))
    elif layout == "misspelt default":
        (folder / "voice.json").write_text(json.dumps({**GOOD_RECORD, "defaults": {"temprature": 0.5}}))
    elif layout == "misspelt key":
        (folder / "voice.json").write_text(json.dumps({**GOOD_RECORD, "adaptor": "someone/voice-lora"}))
    elif layout == "bad adapter":
        (folder / "voice.json").write_text(json.dumps({**GOOD_RECORD, "adapter": 3}))
    elif layout == "prefix not an object":
        (folder / "voice.json").write_text(json.dumps({**GOOD_RECORD, "prefix": ["hello"]}))
    elif layout == "missing codes":
        _with_prefix(folder)
        (folder / "codes.npy").unlink()
    elif layout == "codes not numpy":
        _with_prefix(folder)
        (folder / "codes.npy").write_bytes(b"not a numpy file")
    elif layout == "codes of floats":
        _with_prefix(folder)
        np.save(folder / "codes.npy", np.full((8, 30), 0.5))
    elif layout == "codes of one row":
        _with_prefix(folder)
        np.save(folder / "codes.npy", np.zeros(30, np.int16))
    elif layout == "negative codes":
        _with_prefix(folder)
        np.save(folder / "codes.npy", np.full((8, 30), -3, np.int16))
    elif layout == "no words":
        _with_prefix(folder, words=[])
    elif layout == "word without times":
        _with_prefix(folder, words=[{"text": "hello", "speaker": 1}])
    elif layout == "word timed in text":
        _with_prefix(folder, words=[{**word, "start": "soon"}])
    elif layout == "word ending first":
        _with_prefix(folder, words=[{**word, "start": 0.6, "end": 0.3}])
    elif layout == "third speaker":
        _with_prefix(folder, words=[{**word, "speaker": 3}])
    elif layout == "bad speaker 2 frame":
        _with_prefix(folder, speaker_2_frame=99)
    elif layout == "not json":
        (folder / "voice.json").write_text("{not json")
    elif layout == "a file":
        folder.rmdir()
        folder.write_text("")


@pytest.mark.parametrize("layout,file,message,fix", [
    ("empty", "", r"is not a stored voice folder \(no voice.json\)", "make one with dia2-infer"),
    ("run folder", "", "it is a training run folder", "pass its adapter folder"),
    ("full model", "", r"holds a whole model \(model.safetensors", "load it as the model"),
    ("newer format", "voice.json", "format 'dia2-voice/9' is not one this dia2-toolkit reads", "upgrade dia2-toolkit"),
    ("bad defaults", "voice.json", "cfg -1 must be above 0", "correct it or remove it"),
    ("misspelt default", "voice.json", "'temprature' is not a voice setting", "seed, cfg, temperature, top_k"),
    ("misspelt key", "voice.json", "unknown key 'adaptor'", "correct it or remove it"),
    ("bad adapter", "voice.json", "'adapter' must be null, '.', a folder or a Hub repo id", "correct it"),
    ("prefix not an object", "voice.json", "'prefix' must be null or an object", "make the voice again"),
    ("missing codes", "codes.npy", "is missing", "copy the whole voice folder"),
    ("codes not numpy", "codes.npy", "cannot be read as the prefix's codes", "make the voice again"),
    ("codes of floats", "codes.npy", "float64", "make the voice again"),
    ("codes of one row", "codes.npy", r"shape \(30,\)", "make the voice again"),
    ("negative codes", "codes.npy", "negative", "make the voice again"),
    ("no words", "voice.json", "no words", "make the voice again"),
    ("word without times", "voice.json", "prefix word 1", "make the voice again"),
    ("word timed in text", "voice.json", "prefix word 1 .* 'start'", "make the voice again"),
    ("word ending first", "voice.json", "prefix word 1 .* ends before it starts", "make the voice again"),
    ("third speaker", "voice.json", "prefix word 1 .* speaker 3", "make the voice again"),
    ("bad speaker 2 frame", "voice.json", "speaker_2_frame must be null or a frame inside the codes", "make the voice again"),
    ("not json", "voice.json", "cannot be read as JSON", "make the voice again"),
    ("a file", "", "is a file", "give a voice folder"),
])
def test_what_is_not_a_voice_is_refused_naming_the_file_and_the_fix(tmp_path, layout, file, message, fix):
    folder = tmp_path / "v"
    folder.mkdir()
    _damage(folder, layout)
    with pytest.raises(VoiceError, match=message) as caught:
        read_voice(folder)
    assert str(folder / file if file else folder) in str(caught.value) and fix in str(caught.value), str(caught.value)


def test_prefix_codes_outside_the_codecs_range_are_refused_before_generating(tiny_tts):
    from dia2.generation.prefix import PrefixError

    codes = torch.full((tiny_tts.model.config.num_codebooks, 30), tiny_tts.codec.codebook_size)
    prefix = VoicePrefix(codes, (WORDS[0],), tiny_tts.codec.fingerprint)
    with pytest.raises(PrefixError, match=f"codes 0 to {tiny_tts.codec.codebook_size - 1}.*make the voice again"):
        tiny_tts.generate("[S1] Hi.", GenerationConfig(seed=0, max_frames=40), prefix=prefix)
