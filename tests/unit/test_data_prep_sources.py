"""Inputs a user controls: folders, manifests, speaker maps, options and the CLI built from them."""

import json
from dataclasses import fields, replace
from pathlib import Path

import pytest

from data_prep.cli import build_parser, config_from_args
from data_prep.config import (
    FLAG_SPELLING,
    SECTIONS,
    PrepConfig,
    PrepConfigError,
    SegmentOptions,
    SpeakerOptions,
    check_context_budget,
)
from data_prep.pipeline import check_output
from data_prep.work import recorded_identity
from data_prep.sources import collect_sources
from dia2.options import field_docs, sections


def touch(root: Path, *names: str) -> Path:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"RIFF")
    return root


def test_folder_scan_is_recursive_sorted_and_lists_what_is_not_audio(tmp_path):
    touch(tmp_path, "b/two.FLAC", "a/one.wav", "notes.txt", ".hidden/x.wav", "c/.DS_Store", "out/old.wav")
    sources = collect_sources(tmp_path, SpeakerOptions(), exclude=tmp_path / "out")
    assert [f.name for f in sources.files] == ["a/one.wav", "b/two.FLAC"]
    assert sources.ignored == ("notes.txt",)
    assert sources.speaker_names == ("speaker_1",) and all(f.speakers == (1,) for f in sources.files)


def test_folder_errors_name_the_input(tmp_path):
    with pytest.raises(PrepConfigError, match="does not exist"):
        collect_sources(tmp_path / "nope", SpeakerOptions())
    touch(tmp_path, "readme.md")
    with pytest.raises(PrepConfigError, match=f"no audio files in {tmp_path}"):
        collect_sources(tmp_path, SpeakerOptions())


def test_stereo_gives_each_file_two_channel_speakers(tmp_path):
    touch(tmp_path, "talk.wav")
    sources = collect_sources(tmp_path, SpeakerOptions(stereo=True, speakers=("ann", "bob")))
    assert sources.speaker_names == ("ann", "bob") and sources.files[0].speakers == (1, 2)


def test_speaker_map_json_and_csv(tmp_path):
    touch(tmp_path, "a.wav", "sub/b.wav", "talk.wav")
    mapping = tmp_path.parent / "map.json"
    mapping.write_text(json.dumps({"sub/b.wav": "bob", "a.wav": "ann", "talk.wav": ["ann", "bob"]}))
    sources = collect_sources(tmp_path, SpeakerOptions(speaker_map=mapping))
    assert sources.speaker_names == ("bob", "ann")  # first appearance in the map
    assert {f.name: f.speakers for f in sources.files} == {"a.wav": (2,), "sub/b.wav": (1,), "talk.wav": (2, 1)}
    table = tmp_path.parent / "map.csv"
    table.write_text("path,speaker,speaker_2\na.wav,ann,\nsub/b.wav,bob,\ntalk.wav,ann,bob\n")
    sources = collect_sources(tmp_path, SpeakerOptions(speaker_map=table, speakers=("ann", "bob")))
    assert {f.name: f.speakers for f in sources.files} == {"a.wav": (1,), "sub/b.wav": (2,), "talk.wav": (1, 2)}


@pytest.mark.parametrize(
    "content, options, message",
    [
        ({"a.wav": "carol", "b.wav": "ann"}, {"speakers": ("ann", "bob")}, "unknown speaker.*carol.*--speakers declares ann, bob"),
        ({"a.wav": "ann", "b.wav": ["bob", "carol"]}, {}, "3 speakers.*two slots"),
        ({"a.wav": "ann"}, {}, "no speaker for 1 recording.*b.wav"),
        ({"a.wav": "ann", "b.wav": "ann", "c.wav": "bob"}, {}, "not found in the input folder: c.wav"),
        ({"a.wav": "ann", "b.wav": 3}, {}, "a speaker is a name or a list of two names"),
    ],
)
def test_speaker_map_errors(tmp_path, content, options, message):
    touch(tmp_path / "in", "a.wav", "b.wav")
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps(content))
    with pytest.raises(PrepConfigError, match=message):
        collect_sources(tmp_path / "in", SpeakerOptions(speaker_map=mapping, **options))


def test_csv_and_jsonl_manifests_resolve_paths_next_to_them(tmp_path):
    touch(tmp_path, "audio/x.wav", "audio/y.wav")
    csv = tmp_path / "list.csv"
    csv.write_text("path,speaker,text\naudio/y.wav,bob,Hi there.\naudio/x.wav,ann,\n")
    sources = collect_sources(csv, SpeakerOptions())
    assert [(f.name, f.path, f.speakers, f.text) for f in sources.files] == [
        ("audio/x.wav", tmp_path / "audio/x.wav", (2,), None),
        ("audio/y.wav", tmp_path / "audio/y.wav", (1,), "Hi there."),
    ]
    jsonl = tmp_path / "list.jsonl"
    jsonl.write_text('{"path": "audio/x.wav", "speaker": "ann", "speaker_2": "bob"}\n\n{"path": "audio/y.wav"}\n')
    sources = collect_sources(jsonl, SpeakerOptions())
    assert [f.speakers for f in sources.files] == [(1, 2), (1,)]


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("m.csv", "file,speaker\na.wav,ann\n", "unknown column.*file.*missing column.*path"),
        ("m.csv", "path,speeker\na.wav,ann\n", "unknown column.*speeker"),
        ("m.csv", "path\na.wav\na.wav\n", "line 3: a.wav is already listed on line 2"),
        ("m.csv", "path\n", "lists no recordings"),
        ("m.jsonl", '{"path": "a.wav"}\n[1]\n', "line 2: each line must be an object"),
        ("m.jsonl", '{"path": "a.wav", "txt": "hi"}\n', "line 1: unknown column.*txt"),
        ("m.jsonl", "{oops\n", "line 1 is not JSON"),
        ("m.txt", "a.wav\n", "not a manifest"),
    ],
)
def test_manifest_errors(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PrepConfigError, match=message):
        collect_sources(path, SpeakerOptions())


def test_option_validation_names_the_flag_and_the_fix(tmp_path):
    base = PrepConfig(tmp_path, tmp_path / "out")
    bad = {
        "--min-seconds 5.0 is more than --max-seconds 2.0": replace(base, segment=SegmentOptions(min_seconds=5.0, max_seconds=2.0)),
        "--speakers names 3 speakers": replace(base, speaker=SpeakerOptions(speakers=("a", "b", "c"))),
        "--stereo puts two speakers": replace(base, speaker=SpeakerOptions(speakers=("a",), stereo=True)),
        "either --stereo or --speaker-map": replace(base, speaker=SpeakerOptions(stereo=True, speaker_map=tmp_path)),
    }
    for message, config in bad.items():
        with pytest.raises(PrepConfigError, match=message):
            config.validate()
    assert base.validate() is base


def test_max_seconds_must_leave_room_for_the_prefix_and_the_tail():
    assert check_context_budget(SegmentOptions(), max_context_steps=1500, max_delay=18, tail_frames=8) == 1500 - 125 - 18
    with pytest.raises(PrepConfigError, match=r"--max-seconds 110.0 does not fit.*room for 107.\d s.*lower --max-seconds or --prefix-seconds"):
        check_context_budget(SegmentOptions(max_seconds=110.0), 1500, 18, 8)
    check_context_budget(SegmentOptions(max_seconds=110, prefix_seconds=0), 1500, 18, 8)


def test_output_folder_that_is_not_a_corpus_is_refused_unless_overwrite(tmp_path):
    check_output(tmp_path / "new", overwrite=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(PrepConfigError, match="exists and is not a dia2-prep corpus.*thesis.tex.*--overwrite"):
        check_output(tmp_path / "mine", overwrite=False)
    check_output(tmp_path / "mine", overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(PrepConfigError, match="is a file"):
        check_output(tmp_path / "file", overwrite=False)


def test_every_option_is_documented_once_and_that_doc_is_the_help():
    help_text = "".join(build_parser().format_help().split())  # argparse re-wraps lines, even at hyphens
    for title, section in sections(PrepConfig).items():
        for name, doc in field_docs(section).items():
            assert FLAG_SPELLING.get(title, {}).get(name, f"--{name.replace('_', '-')}") in help_text
            assert "".join(doc.split()) in help_text, name


def test_cli_arguments_become_the_frozen_config(tmp_path):
    args = build_parser().parse_args(
        [str(tmp_path), "out", "--max-seconds", "12.5", "--speakers", "ann, bob", "--stereo", "--no-progress", "--beam-size", "2"]
    )
    config = config_from_args(args)
    assert config.segment.max_seconds == 12.5 and config.speaker.speakers == ("ann", "bob") and config.speaker.stereo
    assert config.run.progress is False and config.asr.beam_size == 2 and config.output == Path("out")
    defaults = config_from_args(build_parser().parse_args([str(tmp_path), "out"]))
    for section in SECTIONS:
        name = next(f.name for f in fields(PrepConfig) if f.default_factory is section)  # type: ignore[comparison-overlap]
        assert getattr(defaults, name) == section()


@pytest.mark.parametrize("given", ["./tiny.en", "tiny.en", "{abs}"])
def test_the_recorded_asr_identity_names_a_local_model_without_its_path(tmp_path, monkeypatch, given):
    from dia2.audio.asr import WhisperTranscriber

    (tmp_path / "tiny.en").mkdir()
    (tmp_path / "tiny.en" / "model.bin").write_bytes(b"weights")
    monkeypatch.chdir(tmp_path)
    given = given.format(abs=tmp_path / "tiny.en")
    identity = WhisperTranscriber(given).identity
    assert str(tmp_path) in identity  # the cache key keeps the path: another copy is another model
    recorded = recorded_identity(identity, given)
    assert str(tmp_path) not in recorded and recorded.startswith("faster-whisper:tiny.en@")
    assert recorded_identity("faster-whisper:small.en;compute=int8", "small.en") == "faster-whisper:small.en;compute=int8"


def test_data_prep_accepts_a_single_audio_file(tmp_path):
    from data_prep.config import SpeakerOptions

    (tmp_path / "other.wav").write_bytes(b"")
    one = tmp_path / "me.flac"
    one.write_bytes(b"")
    sources = collect_sources(one, SpeakerOptions(speakers=("me",)))
    assert [(f.path, f.name) for f in sources.files] == [(one, "me.flac")]
    assert sources.speaker_names == ("me",)
