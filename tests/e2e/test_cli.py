"""`dia2-infer` end to end on the embedded tiny default: a playable file, and clear errors.

One test runs the real entry point (`python -m dia2.cli`) in a child process; the rest call
`dia2.cli.main(argv)` in-process, as the entry point does, which saves a Python start-up and a
model load per case."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import soundfile as sf

from dia2.cli import main
from tests.conftest import REPO_ROOT


def run_cli(*args, cache, timeout=600, stdin=None):
    env = {**os.environ, "DIA2_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dia2.cli", *map(str, args)],
        check=False, capture_output=True, text=True, cwd=REPO_ROOT, timeout=timeout, env=env, input=stdin,
    )


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("dia2-cache")


@pytest.fixture
def cli(cache, monkeypatch, capsys):
    """dia2.cli.main(argv) in this process, from the repository root, with the test's cache."""
    monkeypatch.setenv("DIA2_CACHE", str(cache))
    monkeypatch.chdir(REPO_ROOT)

    def call(*args) -> Run:
        capsys.readouterr()
        try:
            code = main(list(map(str, args)))
        except SystemExit as exc:  # argparse refuses a flag with exit code 2
            code = exc.code
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return call


def test_the_entry_point_writes_a_playable_file(tmp_path, cache):
    out = tmp_path / "speech.wav"
    stamps = tmp_path / "words.json"
    proc = run_cli("--tiny", "--text", "[S1] Hello there. [S2] Hi!", "--seed", "0", "--timestamps", stamps, out, cache=cache)
    assert proc.returncode == 0, proc.stderr
    assert "untrained" in proc.stderr and f"wrote {out}" in proc.stdout
    # Written to a pipe, progress comes as plain lines; its total is the frames this short
    # script is expected to take (about 2 s of speech), not the 1501-frame maximum.
    bar = [line for line in proc.stderr.splitlines() if line.startswith("generating:")]
    assert bar and "\r" not in proc.stderr and bar[-1].endswith("done")
    total = int(bar[0].split("/")[1].split()[0])
    assert 10 < total < 100
    data, rate = sf.read(str(out))
    assert rate == 24000 and data.ndim == 1 and len(data) > 24000 // 2
    assert [w["word"] for w in json.loads(stamps.read_text())] == ["Hello", "there.", "Hi!"]


@pytest.mark.parametrize("ext", ["flac", "ogg"])
def test_cli_writes_a_playable_file(tmp_path, cli, ext):
    out = tmp_path / f"speech.{ext}"
    stamps = tmp_path / "words.json"
    proc = cli("--tiny", "--text", "[S1] Hello there. [S2] Hi!", "--seed", "0", "--timestamps", stamps, out)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout
    data, rate = sf.read(str(out))
    assert rate == 24000 and data.ndim == 1 and len(data) > 24000 // 2
    assert [w["word"] for w in json.loads(stamps.read_text())] == ["Hello", "there.", "Hi!"]


def test_cli_reads_the_script_from_a_file_and_is_reproducible(tmp_path, cli):
    script = tmp_path / "script.txt"
    script.write_text("[S1] Good morning. [S2] Morning!\n")
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    for out in (a, b):
        proc = cli("--tiny", "--input", script, "--seed", "3", "--cfg", "3", "--temperature", "0.9", out)
        assert proc.returncode == 0, proc.stderr
    assert sf.read(str(a))[0].tolist() == sf.read(str(b))[0].tolist()


def test_hf_tiny_is_the_embedded_model_that_tiny_is_short_for(tmp_path, cli):
    outs = {flags: tmp_path / f"{flags[-1]}.wav" for flags in (("--hf", "tiny"), ("--tiny",))}
    for flags, out in outs.items():
        proc = cli(*flags, "--text", "[S1] Hello there.", "--seed", "1", "--max-frames", "40", out)
        assert proc.returncode == 0 and "untrained" in proc.stderr, proc.stderr
    first, second = (sf.read(str(out))[0] for out in outs.values())
    assert len(first) > 0 and first.tolist() == second.tolist()


@pytest.mark.parametrize("args,message", [
    (["--tiny", "--text", "hi", "out.mp4"], "unknown extension '.mp4'"),
    (["--tiny", "out.wav"], "exactly one of --input FILE or --text"),
    (["--tiny", "--input", "missing.txt", "out.wav"], "--input missing.txt: file not found"),
    (["--tiny", "--text", "hi", "--prefix-speaker-1", "nope.wav", "out.wav"], "--prefix-speaker-1 nope.wav: file not found"),
    (["--tiny", "--text", "hi", "--cfg", "0", "out.wav"], "cfg_scale must be > 0"),
    (["--tiny", "--text", "hi", "--low-vram", "2bit", "out.wav"], "invalid choice: '2bit'"),
    (["--tiny", "--hf", "x/y", "--text", "hi", "out.wav"], "cannot be combined"),
    (["--tiny", "--text", "hi", "--cuda-graph", "--device", "cpu", "out.wav"], "--cuda-graph needs a CUDA device"),
    (["--tiny", "--text", "hi", "--prefix-transcript", "Hello there.", "out.wav"],
     "--prefix-transcript is what --prefix-speaker-1/2 say"),
    (["--tiny", "--text", "hi", "--prefix-speaker-1", "tests/fixtures/audio/voice_b.flac", "--prefix-transcript", "  ",
      "out.wav"], "--prefix-transcript is empty"),
    # Like a missing recording, a missing adapter folder is refused with the flags, before anything loads.
    (["--tiny", "--text", "hi", "--adapter", "no/such/adapter", "out.wav"], "--adapter no/such/adapter: adapter"),
    (["--tiny", "--text", "hi", "--voice", "tests/fixtures", "out.wav"],
     "--voice: tests/fixtures is not a stored voice folder (no voice.json)"),
    (["--tiny", "--text", "hi", "--save-voice", "v", "out.wav"], "--save-voice stores the voice this run speaks with"),
])
def test_cli_rejects_bad_flags(cli, args, message):
    proc = cli(*args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


@pytest.mark.parametrize("args,message", [
    (["--tiny", "--text", "[S3] hello", "out.wav"], "[S3]"),
    (["--tiny", "--text", "   ", "out.wav"], "empty"),
    (["--hf", "nobody/NoSuchDia2", "--text", "hi", "out.wav"], "HF_HUB_OFFLINE is set"),
])
def test_cli_reports_bad_input_without_a_traceback(cli, args, message):
    proc = cli(*args)
    assert proc.returncode == 1, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (REPO_ROOT / "out.wav").exists()


def test_a_prefix_transcript_is_aligned_to_the_heard_words_and_saved(tmp_path, cli, tiny_en):
    """--prefix-transcript replaces the heard words, each timed from the heard words it matches or
    replaces (dia2.text.transcript): here one heard word typed as two shares that word's span."""
    from dia2.generation.voice import read_voice
    from dia2.text.transcript import comparable

    recording = REPO_ROOT / "tests" / "fixtures" / "audio" / "voice_b.flac"
    common = ("--tiny", "--text", "[S1] Fine.", "--max-frames", "40", "--prefix-speaker-1", recording,
              "--whisper-model", tiny_en)
    proc = cli(*common, "--save-voice", tmp_path / "heard", tmp_path / "heard.wav")
    assert proc.returncode == 0, proc.stderr
    heard = read_voice(tmp_path / "heard").prefix.words
    k = max(range(len(heard)), key=lambda i: len(comparable(heard[i].text)))
    word = heard[k].text
    typed = [w.text for w in heard[:k]] + [word[:2], word[2:]] + [w.text for w in heard[k + 1:]]
    proc = cli(*common, "--prefix-transcript", " ".join(typed), "--save-voice", tmp_path / "typed",
               tmp_path / "typed.wav")
    assert proc.returncode == 0, proc.stderr
    typed_voice = read_voice(tmp_path / "typed")
    assert typed_voice.transcript == " ".join(typed) and typed_voice.adapter is None
    words = typed_voice.prefix.words
    assert [w.text for w in words] == typed
    assert words[k].start == heard[k].start and words[k + 1].end == heard[k].end and words[k].end < heard[k].end
    kept = [(w.start, w.end) for w in words[:k] + words[k + 2:]]
    assert kept == [(w.start, w.end) for w in heard[:k] + heard[k + 1:]], "the other words keep their heard times"


def test_verbose_says_what_the_command_is_doing(tmp_path, cli, caplog):
    import logging

    caplog.set_level(logging.INFO)
    proc = cli("--tiny", "--text", "[S1] Hello there.", "--seed", "0", "--verbose", tmp_path / "out.wav")
    assert proc.returncode == 0, proc.stderr
    said = [r.getMessage() for r in caplog.records if r.name in ("dia2.cli", "dia2.launch.model")]  # the loader's too
    assert any(m.startswith("loading the model tiny") for m in said)
    assert any(m.startswith("loaded in") for m in said)
    assert any(m.startswith("generating about") and "frames" in m for m in said)


# --- any voice folder: a prefix, an adapter, or both, with its default settings (issue 25) --------


@pytest.fixture(scope="module")
def trained_voice(tmp_path_factory):
    """A run's adapter folder, which is a voice: a random LoRA for the embedded tiny model, and
    voice.json naming the folder itself as the adapter, with a default seed and CFG."""
    from dia2.generation.voice import Voice, VoiceDefaults, write_voice
    from tests.helpers.adapters import save_random_adapter

    adapter = save_random_adapter(tmp_path_factory.mktemp("runs") / "me" / "adapter")
    write_voice(Voice(adapter=str(adapter), defaults=VoiceDefaults(seed=3, cfg=3.0), run={"base_model": "tiny"}), adapter)
    return adapter


def _spoken(cli, out, *flags):
    proc = cli("--tiny", "--text", "[S1] Hello there.", "--max-frames", "30", *flags, out)
    assert proc.returncode == 0, proc.stderr
    return sf.read(str(out))[0].tolist()


def test_a_trained_runs_adapter_folder_speaks_as_a_voice_with_its_defaults_under_the_flags(tmp_path, cli, trained_voice):
    """--voice runs/me/adapter applies the adapter and the voice's seed and CFG; a flag given wins
    over the voice's default (as a request's field does in the server)."""
    by_voice = _spoken(cli, tmp_path / "voice.wav", "--voice", trained_voice)
    assert by_voice == _spoken(cli, tmp_path / "flags.wav", "--adapter", trained_voice, "--seed", "3", "--cfg", "3")
    assert by_voice != _spoken(cli, tmp_path / "base.wav", "--seed", "3", "--cfg", "3"), "the adapter was not applied"
    seed_4 = _spoken(cli, tmp_path / "seed4.wav", "--voice", trained_voice, "--seed", "4")
    assert seed_4 != by_voice
    assert seed_4 == _spoken(cli, tmp_path / "seed4-flags.wav", "--adapter", trained_voice, "--seed", "4", "--cfg", "3")


def test_save_voice_writes_the_voice_a_run_speaks_with_in_the_one_format(tmp_path, cli, trained_voice):
    """--save-voice keeps the adapter and, as defaults, the settings that differ from the defaults
    (the voice's seed overridden by a flag, its CFG); speaking with the saved voice gives the same audio."""
    from dia2.generation.voice import VoiceDefaults, read_voice

    first = _spoken(cli, tmp_path / "first.wav", "--voice", trained_voice, "--seed", "4", "--save-voice", tmp_path / "saved")
    record = json.loads((tmp_path / "saved" / "voice.json").read_text())
    assert (record["format"], record["prefix"], record["adapter"]) == ("dia2-voice/2", None, str(trained_voice))
    assert read_voice(tmp_path / "saved").defaults == VoiceDefaults(seed=4, cfg=3.0)
    assert _spoken(cli, tmp_path / "again.wav", "--voice", tmp_path / "saved") == first


def test_a_runs_adapter_folder_from_before_the_one_format_speaks_as_a_voice(tmp_path, cli, trained_voice):
    """A run's adapter folder written before voice.json (its record in dia2_voice.json) reads as
    that adapter's voice, as `--adapter` would apply it."""
    import shutil

    from tests.helpers.old_voice_layouts import old_run_adapter

    old = shutil.copytree(trained_voice, tmp_path / "old-run" / "adapter")
    (old / "voice.json").unlink()
    old_run_adapter(old, {"base_model": "tiny"})
    assert (_spoken(cli, tmp_path / "old.wav", "--voice", old, "--seed", "3")
            == _spoken(cli, tmp_path / "adapter.wav", "--adapter", old, "--seed", "3"))


def test_a_voice_saved_with_a_prefix_speaks_again_from_its_folder_in_either_layout(tmp_path, cli, tiny_en):
    """--save-voice keeps the prefix (its words as typed), the transcript, the seed and the CFG; --voice
    alone then speaks exactly as that run did, without Whisper. The same prefix in the layout
    --save-voice wrote before the one format (no settings kept then) speaks so with the flags."""
    from dia2.generation.voice import read_voice
    from tests.helpers.old_voice_layouts import old_save_voice

    typed = "The quick brown fox jumps over the lazy dog."  # what voice_a.flac says (espeak-ng)
    made = _spoken(cli, tmp_path / "made.wav", "--prefix-speaker-1", REPO_ROOT / "tests/fixtures/audio/voice_a.flac",
                   "--prefix-transcript", typed, "--whisper-model", tiny_en, "--seed", "11", "--cfg", "2.5",
                   "--save-voice", tmp_path / "me")
    record = json.loads((tmp_path / "me" / "voice.json").read_text())
    assert (record["format"], record["adapter"], record["transcript"]) == ("dia2-voice/2", None, typed)
    assert record["defaults"] == {"seed": 11, "cfg": 2.5, "temperature": None, "top_k": None}
    assert [w["text"] for w in record["prefix"]["words"]] == typed.split()
    again = _spoken(cli, tmp_path / "again.wav", "--voice", tmp_path / "me", "--whisper-model", tmp_path / "no-whisper")
    assert again == made
    assert _spoken(cli, tmp_path / "seed-12.wav", "--voice", tmp_path / "me", "--seed", "12") != made
    old = old_save_voice(read_voice(tmp_path / "me").prefix, tmp_path / "old")
    assert _spoken(cli, tmp_path / "old.wav", "--voice", old, "--seed", "11", "--cfg", "2.5") == made
