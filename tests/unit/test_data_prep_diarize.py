"""Diarisation of mono dialogue (data_prep.diarize, data_prep.speaker_clusters): two espeak voices
mixed to mono get >= 90% of their speech on the right speaker with the turns in order, names by
first appearance or by enrollment clips, overlapping speech cut out, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_prep.diarize import DiarizeConfig, Diarizer, check_speakers, parse_enrollment
from data_prep.speaker_clusters import DiarizeError, cluster_windows, match_enrollment, silhouette


@pytest.fixture(scope="module")
def diarizer() -> Diarizer:
    pytest.importorskip("resemblyzer")
    return Diarizer()


def _read(recordings, name: str) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(str(Path(recordings["folder"]) / name), dtype="float32")
    return audio, rate


def _shares(result, turns: list[dict]) -> tuple[float, float]:
    """(right, wrong): shares of the known turns' time that diarised turns give to their own
    speaker and to another."""
    total = sum(t["end"] - t["start"] for t in turns)
    right = wrong = 0.0
    for truth in turns:
        for turn in result.turns:
            shared = max(0.0, min(turn.end, truth["end"]) - max(turn.start, truth["start"]))
            right += shared if turn.speaker == truth["speaker"] else 0.0
            wrong += shared if turn.speaker != truth["speaker"] else 0.0
    return right / total, wrong / total


@pytest.fixture(scope="module")
def dialogue(diarizer, recordings):
    return diarizer.diarize(*_read(recordings, "dialogue.wav"), ["alice", "bob"])


def test_a_mono_dialogue_gets_its_speakers_and_turns(dialogue, recordings):
    turns = recordings["dialogue"]["turns"]
    right, wrong = _shares(dialogue, turns)
    assert right >= 0.9 and wrong <= 0.02, (right, wrong, dialogue.turns)
    assert [t.speaker for t in dialogue.turns] == [t["speaker"] for t in turns]  # alice, bob, alice, bob, alice
    assert dialogue.named_by == {"alice": "first appearance", "bob": "first appearance"}
    for name in ("alice", "bob"):
        spoken = sum(t["end"] - t["start"] for t in turns if t["speaker"] == name)
        assert 0.6 * spoken <= dialogue.talk_seconds[name] <= spoken + 0.2, (name, dialogue.talk_seconds)
    assert dialogue.overlaps == () and dialogue.unassigned == ()
    assert dialogue.confidence > 0.4 and dialogue.separation < 0.8  # two distinct voices (espeak female/male: ~0.6)
    assert all(t.confidence > 0.5 for t in dialogue.turns)


def test_without_enrollment_names_follow_first_appearance(diarizer, recordings):
    # The first voice heard is alice's, so it takes the first name given: in the dialogue, where
    # alice also talks most, and in the overlap recording, where the second voice talks most.
    result = diarizer.diarize(*_read(recordings, "dialogue.wav"), ["bob", "alice"])
    assert [t.speaker for t in result.turns] == ["bob", "alice", "bob", "alice", "bob"]
    result = diarizer.diarize(*_read(recordings, "overlap.wav"), ["bob", "alice"])
    assert result.talk_seconds["alice"] > result.talk_seconds["bob"]  # "alice" names the voice that talks more
    assert [t.speaker for t in result.turns] == ["bob", "alice", "bob", "alice"]


def test_enrollment_clips_name_the_speakers(diarizer, recordings):
    enroll = recordings["enroll"]  # clips of each voice saying other sentences than the dialogue's
    result = diarizer.diarize(*_read(recordings, "dialogue.wav"), ["bob", "alice"], enrollment=enroll)
    assert [t.speaker for t in result.turns] == [t["speaker"] for t in recordings["dialogue"]["turns"]]
    assert result.named_by == {"alice": "enrollment", "bob": "enrollment"}
    assert all(s > 0.8 for s in result.enrollment_similarity.values()), result.enrollment_similarity
    one = diarizer.diarize(*_read(recordings, "dialogue.wav"), ["alice", "bob"], enrollment={"bob": enroll["bob"]})
    assert [t.speaker for t in one.turns] == [t["speaker"] for t in recordings["dialogue"]["turns"]]
    assert one.named_by == {"alice": "first appearance", "bob": "enrollment"}


def test_an_enrollment_clip_of_someone_else_is_an_error_naming_it(diarizer, recordings):
    stranger = str(Path(recordings["folder"]) / "stranger.wav")
    with pytest.raises(DiarizeError, match=r"enrollment clip .*stranger\.wav for bob matches no speaker"):
        diarizer.diarize(*_read(recordings, "dialogue.wav"), ["alice", "bob"], enrollment={"alice": recordings["enroll"]["alice"], "bob": stranger})
    same = str(Path(__file__).resolve().parents[1] / "fixtures/audio/voice_b.flac")  # alice's voice again
    with pytest.raises(DiarizeError, match="sound like the same speaker") as error:
        diarizer.diarize(*_read(recordings, "dialogue.wav"), ["alice", "bob"], enrollment={"alice": recordings["enroll"]["alice"], "bob": same})
    assert "voice_b.flac (bob)" in str(error.value) and "greeting.flac (alice)" in str(error.value)


def test_overlapping_speech_is_cut_out(diarizer, recordings):
    truth = recordings["overlap"]
    result = diarizer.diarize(*_read(recordings, "overlap.wav"), ["alice", "bob"])
    both = truth["overlap"]
    span = both["end"] - both["start"]
    found = sum(max(0.0, min(o.end, both["end"]) - max(o.start, both["start"])) for o in result.overlaps)
    assert found >= 0.8 * span, (result.overlaps, both)
    in_turns = sum(max(0.0, min(t.end, both["end"]) - max(t.start, both["start"])) for t in result.turns)
    assert in_turns <= 0.1 * span, result.turns
    right, wrong = _shares(result, truth["turns"])
    assert right >= 0.9 and wrong <= 0.02, (right, wrong, result.turns)
    assert [t.speaker for t in result.turns] == [t["speaker"] for t in truth["turns"]]


def test_short_speech_is_left_unassigned(diarizer, recordings):
    audio, rate = _read(recordings, "dialogue.wav")
    result = diarizer.diarize(audio, rate, ["alice", "bob"], regions=None)
    config = DiarizeConfig(min_speaker_seconds=1.5)
    strict = Diarizer(config, diarizer.detector).diarize(audio, rate, ["alice", "bob"])
    assert len(strict.unassigned) == 2  # bob's 1.0 s "What time is it?" and alice's 1.4 s "That sounds lovely."
    assert len(strict.turns) < len(result.turns)  # no turn spans unassigned speech


def test_speakers_and_enrollment_specs_are_checked(tmp_path, diarizer, recordings):
    with pytest.raises(DiarizeError, match="at least two speaker names, got alice"):
        diarizer.diarize(*_read(recordings, "dialogue.wav"), ["alice"])
    with pytest.raises(DiarizeError, match="distinct"):
        check_speakers(["alice", "alice"])
    with pytest.raises(DiarizeError, match="carol are not among the speakers alice,bob"):
        check_speakers(["alice", "bob"], {"carol": "c.wav"})
    clip = tmp_path / "alice.wav"
    clip.write_bytes(b"")
    assert parse_enrollment([f"alice={clip}"], ["alice", "bob"]) == {"alice": clip}
    for spec, message in [("alice", "not NAME=FILE"), (f"carol={clip}", "not among the speakers"), ("alice=/no/such.wav", "no such file")]:
        with pytest.raises(DiarizeError, match=message):
            parse_enrollment([spec], ["alice", "bob"])
    with pytest.raises(DiarizeError, match="names alice twice"):
        parse_enrollment([f"alice={clip}", f"alice={clip}"], ["alice", "bob"])
    with pytest.raises(DiarizeError, match="enrollment clip .*alice.wav: cannot read"):
        diarizer.diarize(*_read(recordings, "dialogue.wav"), ["alice", "bob"], enrollment={"alice": clip})


def test_too_little_speech_is_an_error(diarizer):
    with pytest.raises(DiarizeError, match="too little speech to tell 2 speakers apart"):
        diarizer.diarize(np.zeros(16000 * 3, np.float32), 16000, ["alice", "bob"])


def _blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings around two directions (60 and 40 windows) and 2 outliers of their own."""
    rng = np.random.default_rng(seed)
    centres = np.eye(8)[:3]
    points = [centres[0] + 0.15 * rng.standard_normal((60, 8)), centres[1] + 0.15 * rng.standard_normal((40, 8)),
              centres[2] + 0.05 * rng.standard_normal((2, 8))]
    x = np.concatenate(points)
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.repeat([0, 1, 2], [60, 40, 2])


def test_clustering_finds_the_voices_and_sets_outliers_aside():
    x, truth = _blobs()
    centroids, labels = cluster_windows(x, 2)
    # Two clusters, one per real voice (the 2 outliers form no speaker of their own).
    assert sorted(np.bincount(labels[:100], minlength=2)) == [40, 60]
    assert len(set(labels[:60])) == 1 and len(set(labels[60:100])) == 1 and labels[0] != labels[60]
    assert silhouette(x[:100], labels[:100]) > 0.5
    assert abs(silhouette(x[:100], np.random.default_rng(1).integers(0, 2, 100))) < 0.1  # no structure
    one_voice = np.concatenate([np.repeat(x[:1], 10, axis=0), np.eye(8)[5:7]])  # one voice and 2 odd windows
    with pytest.raises(DiarizeError, match="could not find 2 distinct voices"):
        cluster_windows(one_voice, 2)


def test_enrollment_matching_takes_the_best_assignment():
    centroids = np.eye(3)[:2]
    voices = {"alice": np.array([0.6, 0.8, 0.0]), "bob": np.array([0.9, 0.436, 0.0])}
    # alice alone would take cluster 1 (0.8) and bob cluster 0 (0.9): the joint best.
    assert match_enrollment(voices, centroids, 0.5, {"alice": "a.wav", "bob": "b.wav"}) == {"alice": 1, "bob": 0}
    with pytest.raises(DiarizeError, match="a.wav for alice matches no speaker"):
        match_enrollment({"alice": np.array([0.0, 0.0, 1.0])}, centroids, 0.5, {"alice": "a.wav"})
