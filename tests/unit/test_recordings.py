"""Recordings are found one way (`dia2.audio.recordings`): data prep's input folder and dia2-eval's
references alike, recursively, in the same formats, with NAME.txt beside NAME.wav as its
transcript (issue 27, item 4)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from data_prep.config import PrepConfigError, SpeakerOptions
from data_prep.sources import collect_sources
from dia2.audio.recordings import find_recordings
from dia2.evaluation.inputs import EvalInputError, read_references, where_found


def tone(path, seconds: float = 0.5, rate: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(str(path), 0.3 * np.sin(2 * np.pi * 220 * t), rate, format=path.suffix[1:].upper())


@pytest.fixture
def recordings(tmp_path):
    """A user's folder: clips in nested subfolders with spaces, an AIFF (any format soundfile reads),
    transcripts beside some clips, notes and hidden files."""
    root = tmp_path / "my recordings"
    tone(root / "intro.wav")
    tone(root / "day 1" / "take 1.flac")
    tone(root / "day 1" / "evening" / "take 2.aiff")
    (root / "day 1" / "take 1.txt").write_text("Hello there.\n", encoding="utf-8")
    (root / "notes.txt").write_text("not a transcript: no notes.wav beside it")
    tone(root / ".trash" / "old.wav")
    return root


def test_the_finder_is_recursive_and_pairs_transcripts(recordings):
    scan = find_recordings(recordings)
    assert [r.name for r in scan.recordings] == ["day 1/evening/take 2.aiff", "day 1/take 1.flac", "intro.wav"]
    assert [r.transcript.name if r.transcript else None for r in scan.recordings] == [None, "take 1.txt", None]
    assert scan.ignored == ("notes.txt",)


def test_eval_finds_references_where_data_prep_finds_recordings(recordings):
    prep = collect_sources(recordings, SpeakerOptions())
    refs = read_references(recordings, 24000)
    assert [r.path for r in refs] == [f.path for f in prep.files]
    assert [r.name for r in refs] == ["day 1/evening/take 2", "day 1/take 1", "intro"]
    assert [r.text for r in refs] == [None, "Hello there.", None]
    assert where_found(refs, recordings) == f"3 recordings in {recordings}: 1 at its top, 1 in day 1/, 1 in day 1/evening/"


def test_data_prep_reads_the_transcript_beside_a_recording_as_its_reference_text(recordings):
    sources = collect_sources(recordings, SpeakerOptions())
    assert {f.name: f.text for f in sources.files} == {
        "day 1/evening/take 2.aiff": None, "day 1/take 1.flac": "Hello there.", "intro.wav": None}
    assert sources.ignored == ("notes.txt",)


def test_a_transcript_that_is_not_utf8_is_refused_by_both(recordings):
    (recordings / "intro.txt").write_bytes("Grüße".encode("latin-1"))
    with pytest.raises(PrepConfigError, match="intro.txt"):
        collect_sources(recordings, SpeakerOptions())
    with pytest.raises(EvalInputError, match="intro.txt"):
        read_references(recordings, 24000)


def test_two_recordings_of_one_name_in_one_folder_are_refused_in_subfolders_too(recordings):
    tone(recordings / "day 1" / "take 1.wav")
    with pytest.raises(EvalInputError, match="take 1.flac and take 1.wav share a name"):
        read_references(recordings, 24000)
