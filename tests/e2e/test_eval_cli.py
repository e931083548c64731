"""`dia2-eval` end to end on the embedded tiny default: JSON + HTML with every section and playable
clips, the adapter-effect check, and bad inputs refused before any output folder appears.

The tiny model's weights are random, so its clips are noise: these tests check what the command
writes and refuses, not how good the voice is (tests/unit/test_evaluation_scoring.py checks the
scores on real speech).
"""

import json
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import soundfile as sf

from dia2.evaluation.cli import main
from dia2.model.config import parse_config
from dia2.tiny import TINY_GEOMETRY
from tests.conftest import REPO_ROOT
from tests.helpers.adapters import save_random_adapter

PREP = REPO_ROOT / "tests" / "fixtures" / "prep"
SECTIONS = ("summary", "adapter-effect", "plots", "base", "base+prefix", "voice", "voice+prefix", "references", "resynthesis")


class Links(HTMLParser):
    """The ids and <audio src> links of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.audio: list[str] = []
        self.svgs = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "audio":
            self.audio.append(attrs["src"])
        self.svgs += tag == "svg"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_en):
    root = tmp_path_factory.mktemp("eval-inputs")
    refs = root / "refs"
    refs.mkdir()
    for name in ("greeting", "weather"):
        shutil.copy(PREP / "alice" / f"{name}.flac", refs / f"{name}.flac")
    (refs / "greeting.txt").write_text("Hello there, how are you doing today?\n")
    (root / "prompts.txt").write_text("# one short prompt\nHello there.\n")
    return {"refs": refs, "prompts": root / "prompts.txt", "asr": tiny_en, "root": root}


@pytest.fixture(autouse=True)
def embedded_tiny(tiny_cache, monkeypatch):
    """`--model tiny` is the session's tiny bundle (not built again for this module)."""
    monkeypatch.setenv("DIA2_CACHE", str(tiny_cache))


def run(inputs, out: Path, *extra: str) -> int:
    return main([
        "--model", "tiny", "--references", str(inputs["refs"]), "--prompts", str(inputs["prompts"]),
        "--asr-model", inputs["asr"], "--max-frames", "30", "--seeds", "0,1", *extra, str(out),
    ])


UNSCORED = ("--asr-model", "none", "--speaker-encoder", "none", "--no-dnsmos", "--no-toplines")
"""No scoring at all: for the tests about configurations and adapters. DNSMOS is what costs (each
short clip is repeated to 9 s and scored in several windows, ~0.4 s each); the full test scores."""


def assert_unscored(data: dict) -> None:
    assert all(c["wer"] is None and c["similarity"] is None and c["dnsmos"] is None for c in data["clips"])
    assert data["toplines"] == {} and data["settings"]["dnsmos"] is False


def test_full_command_writes_every_section_and_playable_clips(tmp_path, inputs, capsys):
    adapter = save_random_adapter(tmp_path / "voice", seed=3)
    out = tmp_path / "report"
    assert run(inputs, out, "--adapter", str(adapter), "--prefix", str(PREP / "alice" / "greeting.flac")) == 0, capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report", "voice"]  # no staging folder left behind
    err = capsys.readouterr().err
    assert f"references: 2 recordings in {inputs['refs']}: 2 at its top" in err
    # Not a terminal: progress comes as lines (the first before any clip, the last when all 12 are done).
    lines = [line for line in err.splitlines() if line.startswith("evaluating:")]
    assert lines[0].startswith("evaluating: 0/12 clips") and lines[-1].startswith("evaluating: 12/12 clips")
    data = json.loads((out / "eval.json").read_text())
    names = [c["name"] for c in data["configurations"]]
    assert names == ["base", "base+prefix", "voice", "voice+prefix"]
    assert len(data["clips"]) == 4 * 2
    for clip in data["clips"]:
        assert clip["wer"] is not None and clip["similarity"] is not None and clip["word_coverage"] is not None
        assert 0 < clip["duration_s"] <= 30 / 12.5 + 0.5
    for config in data["configurations"]:
        assert config["aggregate"]["clips"] == 2 and config["aggregate"]["similarity_spread"] is not None
    refs = data["toplines"]["references"]["clips"]
    assert [Path(c["file"]).name for c in refs] == ["greeting.wav", "weather.wav"]
    # The transcribed reference is scored on real speech; the other has no transcript, so no WER.
    assert refs[0]["wer"] <= 0.6 and refs[1]["wer"] is None
    assert len(data["toplines"]["resynthesis"]["clips"]) == 2
    assert [(e["configuration"], e["passed"]) for e in data["adapter_effect"]] == [("voice", True), ("voice+prefix", True)]
    assert set(data["timing"]) == {"generation_s", "asr_s", "speaker_s", "dnsmos_s", "behaviour_s"}
    # DNSMOS: the references (clean espeak speech) are the topline the tiny model's noise falls far below.
    assert all(c["dnsmos"] is not None for c in data["clips"]) and all(c["dnsmos"] > 2.5 for c in refs)
    assert data["toplines"]["references"]["aggregate"]["dnsmos"] > data["configurations"][0]["aggregate"]["dnsmos"]
    assert data["settings"]["references_found"] == f"2 recordings in {inputs['refs']}: 2 at its top"

    page = Links()
    page.feed((out / "report.html").read_text())
    assert set(SECTIONS) <= page.ids and page.svgs == 3
    files = {c["file"] for c in data["clips"]} | {c["file"] for t in data["toplines"].values() for c in t["clips"]}
    assert sorted(page.audio) == sorted(files) and len(files) == 8 + 4
    for link in page.audio:
        audio, rate = sf.read(str(out / link))
        assert rate == 24000 and len(audio) > 0


def test_a_zero_adapter_fails_loudly_and_writes_nothing(tmp_path, inputs, capsys):
    adapter = save_random_adapter(tmp_path / "untrained", seed=3, scale=0.0)
    out = tmp_path / "report"
    assert run(inputs, out, "--adapter", str(adapter), *UNSCORED) == 1
    err = capsys.readouterr().err
    assert "dia2-eval: error: adapter" in err and "changes nothing" in err and "identical" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["untrained"]


@pytest.mark.parametrize("case,message", [
    ("empty references", "holds no recordings"),
    ("unreadable reference", "broken.wav"),
    ("non-UTF-8 transcript", "greeting.txt (its transcript; not readable as UTF-8 text"),
    ("two recordings of one name", "greeting.flac and greeting.wav share a name"),
    ("missing prompts", "prompt file"),
    ("other base", "trained for another base"),
    ("recorded base", "trained on base 'nari-labs/Dia2-2B' (its adapter_config.json says so), not on --model tiny"),
])
def test_bad_inputs_give_clear_errors_and_no_output(tmp_path, inputs, capsys, case, message):
    refs, prompts, extra = inputs["refs"], inputs["prompts"], []
    if case == "empty references":
        refs = tmp_path / "empty"
        refs.mkdir()
    elif case in ("unreadable reference", "non-UTF-8 transcript", "two recordings of one name"):
        refs = tmp_path / "refs"
        shutil.copytree(inputs["refs"], refs)
        if case == "unreadable reference":
            (refs / "broken.wav").write_bytes(b"RIFF not really a wave file")
        elif case == "non-UTF-8 transcript":
            (refs / "greeting.txt").write_bytes("Grüße aus Köln".encode("latin-1"))
        else:
            sf.write(str(refs / "greeting.wav"), sf.read(str(refs / "greeting.flac"))[0], 16000)
    elif case == "missing prompts":
        prompts = tmp_path / "nowhere.txt"
    elif case == "recorded base":
        extra = ["--adapter", str(save_random_adapter(tmp_path / "for-2b", seed=3, base_name="nari-labs/Dia2-2B"))]
    else:
        geometry = json.loads(json.dumps(TINY_GEOMETRY))
        geometry["model"]["decoder"]["n_embd"] = 128
        extra = ["--adapter", str(save_random_adapter(tmp_path / "big", parse_config(geometry), seed=3))]
    out = tmp_path / "report"
    code = run({**inputs, "refs": refs, "prompts": prompts}, out, *extra)
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("dia2-eval: error:") == 1 and message in err, err
    assert not out.exists() and not any(p.name.startswith(".report") for p in tmp_path.iterdir())


def test_an_adapter_for_another_base_is_evaluated_when_allowed(tmp_path, inputs, capsys):
    adapter = save_random_adapter(tmp_path / "for-2b", seed=3, base_name="nari-labs/Dia2-2B")
    out = tmp_path / "report"
    code = run(inputs, out, "--adapter", str(adapter), "--allow-other-base", "--seeds", "0", *UNSCORED)
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "eval.json").read_text())
    assert data["adapter_effect"][0]["passed"]
    assert_unscored(data)


def test_repeated_seeds_are_refused(tmp_path, inputs, capsys):
    with pytest.raises(SystemExit) as exited:
        run(inputs, tmp_path / "report", "--seeds", "0,1,0")
    assert exited.value.code == 2 and "--seeds repeats 0: give each seed once" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_a_missing_speaker_encoder_is_refused_before_the_model_loads(tmp_path, inputs, capsys, monkeypatch):
    from dia2.generation.tts import Dia2

    loads = []
    monkeypatch.setattr(Dia2, "from_repo", lambda *args, **kwargs: loads.append(args))
    monkeypatch.setitem(sys.modules, "resemblyzer", None)  # import resemblyzer now raises ImportError
    assert run(inputs, tmp_path / "report") == 1
    err = capsys.readouterr().err
    assert "resemblyzer speaker encoder is not installed" in err and "--speaker-encoder none" in err, err
    assert loads == [] and not (tmp_path / "report").exists()


def test_a_voice_folder_brings_its_adapter_and_its_cfg(tmp_path, inputs, capsys):
    """--voice of a trained run's adapter folder (issue 25): its adapter is evaluated as one more
    configuration, its default CFG is the generations' (the seeds stay --seeds)."""
    from dia2.generation.voice import Voice, VoiceDefaults, write_voice

    adapter = save_random_adapter(tmp_path / "runs" / "me" / "adapter", seed=3)
    write_voice(Voice(adapter=str(adapter), defaults=VoiceDefaults(seed=9, cfg=3.0), run={"base_model": "tiny"}), adapter)
    out = tmp_path / "report"
    code = run(inputs, out, "--voice", str(adapter), "--seeds", "0", *UNSCORED)
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "eval.json").read_text())
    assert [c["name"] for c in data["configurations"]] == ["base", "adapter"]
    assert [c["seed"] for c in data["clips"]] == [0, 0] and data["adapter_effect"][0]["passed"]
    settings = data["settings"]
    assert (settings["adapters"], settings["cfg_scale"], settings["voice_prefix"]) == ([str(adapter.resolve())], 3.0, "none")
    # --cfg given wins over the voice's.
    assert run(inputs, tmp_path / "cfg", "--voice", str(adapter), "--cfg", "1.5", "--seeds", "0", *UNSCORED) == 0
    assert json.loads((tmp_path / "cfg" / "eval.json").read_text())["settings"]["cfg_scale"] == 1.5


def test_a_voice_folder_with_a_prefix_and_an_adapter_gives_every_configuration(tmp_path, inputs, capsys, tiny_tts):
    """--voice of a stored voice with both parts (issue 25): its prefix makes the +prefix
    configurations and its adapter is evaluated, as --prefix and --adapter would."""
    from dia2.generation.voice import Voice, write_voice
    from tests.helpers.speech import one_speaker_prefix

    adapter = save_random_adapter(tmp_path / "lora", seed=3)
    folder = write_voice(Voice(prefix=one_speaker_prefix(tiny_tts), adapter=str(adapter)), tmp_path / "voices" / "me")
    out = tmp_path / "report"
    assert run(inputs, out, "--voice", str(folder), "--seeds", "0", *UNSCORED) == 0, capsys.readouterr().err
    data = json.loads((out / "eval.json").read_text())
    assert [c["name"] for c in data["configurations"]] == ["base", "base+prefix", "lora", "lora+prefix"]
    assert (data["settings"]["voice_prefix"], data["settings"]["adapters"]) == (str(folder), [str(adapter.resolve())])
