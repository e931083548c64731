"""Resumability (cache keys and entries), the seeded split by recording, and the QC report."""

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from data_prep.cache import FileCache, entry_key, file_fingerprint, options_digest
from data_prep.config import (
    AsrOptions,
    CorpusModelOptions,
    FilterOptions,
    OutputOptions,
    PrepConfig,
    RunOptions,
    SegmentOptions,
)
from data_prep.qc import build_report, summary_text, write_report
from data_prep.results import CLIPPED, EMPTY, NOT_AUDIO, TOO_SHORT, FileResult, Skip
from data_prep.sources import SourceFile
from data_prep.writer import assign_splits


def digest(config, **overrides):
    args = dict(codec_fingerprint="mimi-a", tokenizer_fingerprint="tok-a", asr_identity="whisper", max_frames=1357, speaker_names=("a",))
    return options_digest(config, **{**args, **overrides})


def test_the_key_follows_the_file_content_and_how_it_is_read(tmp_path):
    path = tmp_path / "a.wav"
    path.write_bytes(b"one")
    source = SourceFile(path, "a.wav")
    base = entry_key(source, file_fingerprint(path), "opts")
    assert entry_key(source, file_fingerprint(path), "opts") == base
    assert entry_key(source, file_fingerprint(path), "other") != base
    assert entry_key(replace(source, speakers=(2,)), file_fingerprint(path), "opts") != base
    assert entry_key(replace(source, text="hello"), file_fingerprint(path), "opts") != base
    path.write_bytes(b"two")
    os.utime(path, ns=(1, 1))
    changed = file_fingerprint(path)
    assert entry_key(source, changed, "opts") != base
    os.utime(path, ns=(2, 2))  # same bytes, touched: prepared again (the user may have replaced it)
    assert file_fingerprint(path) != changed
    assert file_fingerprint(tmp_path / "gone.wav") == "missing"


def test_options_that_change_rows_change_the_digest_and_output_options_do_not(tmp_path):
    config = PrepConfig(tmp_path, tmp_path / "out")
    base = digest(config)
    changes_rows = [
        replace(config, segment=SegmentOptions(max_seconds=20.0)),
        replace(config, filters=FilterOptions(min_confidence=0.1)),
        replace(config, asr=AsrOptions(chunk_seconds=120.0)),
        replace(config, model=CorpusModelOptions(codec_dtype="bfloat16")),
    ]
    assert all(digest(c) != base for c in changes_rows)
    for other in ({"codec_fingerprint": "mimi-b"}, {"tokenizer_fingerprint": "tok-b"}, {"asr_identity": "large"}, {"speaker_names": ("b",)}):
        assert digest(config, **other) != base
    output_only = [
        replace(config, out=OutputOptions(validation_fraction=0.5, seed=3, overwrite=True, push_to_hub="me/x")),
        replace(config, run=RunOptions(threads=1, progress=False, verbose=True)),
        replace(config, model=CorpusModelOptions(device="cuda", encode_batch_size=2, tiny=True, model="elsewhere")),
        replace(config, output=Path("/elsewhere")),
    ]
    assert all(digest(c) == base for c in output_only)


def result_with_rows():
    rows = [
        {"codes": np.arange(24, dtype=np.int16).reshape(3, 8), "words": [{"text": "hi", "start": 0.1, "end": 0.30000001192092896, "speaker": 1}],
         "speakers": ["ann"], "duration": 0.24, "source_file": "a.wav", "source_start": 1.5, "source_end": 1.74, "asr_confidence": 0.875},
    ]
    return FileResult("a.wav", 12.25, 0.1, rows, [Skip("a.wav", TOO_SHORT, "0.4 s", 3.0, 3.4)], ["truncated: ..."])


def test_entries_round_trip_exactly_and_leave_no_temporary_files(tmp_path):
    cache = FileCache(tmp_path / "cache")
    assert cache.load("k") is None and "k" not in cache
    stored = result_with_rows()
    cache.store("k", stored)
    loaded = cache.load("k")
    assert "k" in cache
    assert (loaded.source, loaded.seconds, loaded.wer, loaded.skips, loaded.notes) == (stored.source, stored.seconds, stored.wer, stored.skips, stored.notes)
    for got, want in zip(loaded.rows, stored.rows):
        assert np.array_equal(got.pop("codes"), want["codes"]) and got == {k: v for k, v in want.items() if k != "codes"}
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["k.json", "k.npz"]


def test_a_damaged_entry_counts_as_absent_and_stale_temporaries_are_cleared(tmp_path):
    cache = FileCache(tmp_path)
    cache.store("k", result_with_rows())
    (tmp_path / "k.npz").write_bytes(b"garbage")
    assert cache.load("k") is None
    (tmp_path / ".x.json.123.tmp").write_text("half")
    FileCache(tmp_path)
    assert not list(tmp_path.glob(".*.tmp"))


def test_the_split_is_by_recording_seeded_and_never_empties_train():
    names = [f"f{i}.wav" for i in range(20)]
    split = assign_splits(names, 0.1, seed=0)
    assert sum(v == "validation" for v in split.values()) == 2
    assert split == assign_splits(list(reversed(names)), 0.1, seed=0)  # not the order they were prepared in
    assert split != assign_splits(names, 0.1, seed=1)
    assert list(assign_splits(["a", "b"], 0.05, 0).values()).count("validation") == 1
    assert set(assign_splits(["a"], 0.5, 0).values()) == {"train"}
    assert set(assign_splits(names, 0.0, 0).values()) == {"train"}
    assert list(assign_splits(names, 0.99, 0).values()).count("train") == 1


def dialogue_row(duration=4.0, start=0.0):
    words = [{"text": "hi", "start": 0.0, "end": 1.0, "speaker": 1}, {"text": "yes", "start": 1.5, "end": 4.5, "speaker": 2}]
    return {"duration": duration, "words": words, "source_start": start, "source_end": start + duration}


def test_the_report_counts_every_skip_and_shares_dialogue_time_by_speaker(tmp_path):
    results = [
        FileResult("talk.wav", 10.0, None, [dialogue_row()], [Skip("talk.wav", CLIPPED, "3% at full scale", 5.0, 7.0)], ["truncated: ..."]),
        FileResult("empty.wav", 0.0, None, [], [Skip("empty.wav", EMPTY, "0 bytes")]),
    ]
    report = build_report(results, ["notes.txt"], ("ann", "bob"), {"talk.wav": "train"}, {"files_from_cache": 1})
    assert report["files"] == {"found": 3, "kept": 1, "skipped": 2, "without_utterances": 0}
    assert report["utterances"] == {"kept": 1, "skipped": 1, "train": 1}
    assert report["hours"]["per_speaker"] == {"ann": pytest.approx(1.0 / 3600, abs=1e-6), "bob": pytest.approx(3.0 / 3600, abs=1e-6)}
    assert report["skipped_by_reason"] == {EMPTY: 1, CLIPPED: 1, NOT_AUDIO: 1}
    assert report["files_from_cache"] == 1
    text = summary_text(report)
    for needle in ("notes.txt [whole file] not audio", "empty.wav [whole file] empty: 0 bytes", "talk.wav [5.00-7.00 s] clipped", "truncated", "bob: 0.001 h"):
        assert needle in text
    json_path, text_path = write_report(report, tmp_path)
    assert json.loads(json_path.read_text()) == report and text_path.read_text() == text


def test_kept_hours_count_the_recordings_audio_once(tmp_path):
    """A row's grid is padded with silence past its audio, and neighbouring utterances may share
    the audio between them: kept time is the recording's audio the rows cover, never more than was read."""
    first = {**dialogue_row(), "duration": 6.0, "source_start": 0.2, "source_end": 5.5}  # 0.7 s of padding
    second = {**dialogue_row(), "duration": 4.64, "source_start": 5.0, "source_end": 9.0}  # shares 5.0-5.5
    report = build_report([FileResult("talk.wav", 9.5, None, [first, second], [])], [], ("ann", "bob"), {"talk.wav": "train"})
    hours = report["hours"]
    assert hours["kept"] == pytest.approx(8.8 / 3600, abs=1e-6) and hours["kept"] <= hours["input"]
    assert sum(hours["per_speaker"].values()) == pytest.approx(hours["kept"], abs=1e-6)
    assert report["recordings"][0]["kept_seconds"] == pytest.approx(8.8)


def test_the_corpus_folder_and_the_hub_upload(tmp_path, monkeypatch):
    import datasets
    from huggingface_hub import HfApi

    from data_prep.writer import PushError, push_corpus, write_corpus

    results = [result_with_rows(), replace(result_with_rows(), source="b.wav")]
    (tmp_path / "validation").mkdir()  # a stale split of an earlier run goes away
    counts = write_corpus(tmp_path, results, {"a.wav": "train", "b.wav": "train"}, num_codebooks=8)
    assert counts == {"train": 2} and not (tmp_path / "validation").exists()
    assert len(datasets.load_from_disk(str(tmp_path))["train"]) == 2
    (tmp_path / "corpus_meta.json").write_text("{}")
    calls = []
    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", lambda self, repo, private: calls.append(("push", repo, private, list(self))))
    monkeypatch.setattr(HfApi, "upload_file", lambda self, **kw: calls.append(("upload", kw["path_in_repo"], kw["repo_type"])))
    push_corpus(tmp_path, "me/voice", True, ["corpus_meta.json"])
    assert calls == [("push", "me/voice", True, ["train"]), ("upload", "corpus_meta.json", "dataset")]

    def offline(self, repo, private):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", offline)
    with pytest.raises(PushError, match=f"the corpus is saved in {tmp_path}.*me/voice failed.*ConnectionError.*run the same command again"):
        push_corpus(tmp_path, "me/voice", False, [])


def test_the_studio_shows_kept_and_read_time_from_the_report(tmp_path):
    from dia2.studio.adapt import qc_summary

    first = {**dialogue_row(), "duration": 6.0, "source_start": 0.2, "source_end": 5.5}
    report = build_report([FileResult("talk.wav", 9.5, None, [first], [])], [], ("ann", "bob"), {"talk.wav": "train"})
    json_path, _ = write_report(report, tmp_path)  # where the studio finds it: e2e/test_check_runs.py
    assert "1 utterance(s), 5.3 s kept of 9.5 s read, from 1 of 1 recording(s)" in qc_summary(json_path)
