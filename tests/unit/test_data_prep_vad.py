"""Speech activity (data_prep.vad): silero-vad regions where the fixtures speak, cut boundaries
that never start or end inside speech, silence trimmed to a pad, the speech fraction of a cut."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from data_prep.vad import (
    NO_SPEECH,
    SPEECH_AT_END,
    SPEECH_AT_START,
    SpeechDetector,
    SpeechRegion,
    VadConfig,
    VadError,
    refine_cut,
    speech_fraction,
    speech_regions,
)

FRAME = 0.032  # seconds per VAD frame


@pytest.fixture(scope="module")
def detector() -> SpeechDetector:
    return SpeechDetector()


@pytest.fixture(scope="module")
def dialogue(recordings) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(str(Path(recordings["folder"]) / "dialogue.wav"), dtype="float32")
    return audio, rate


def test_regions_follow_the_spoken_turns(detector, dialogue, recordings):
    audio, rate = dialogue
    regions = detector.regions(audio, rate)
    turns = recordings["dialogue"]["turns"]
    def within(region, turn):  # starts within 0.1 s, ends within 0.15 s (the fading last sound, 32 ms frames)
        return turn["start"] - 0.1 <= region.start and region.end <= turn["end"] + 0.15

    for region in regions:  # every region lies inside a turn (no speech found in the pauses)
        assert any(within(region, t) for t in turns), region
    for turn in turns:  # every turn starts and ends with a region (within 0.1 s and 0.3 s: espeak's soft endings)
        inside = [r for r in regions if within(r, turn)]
        assert inside and abs(inside[0].start - turn["start"]) <= 0.1 and abs(inside[-1].end - turn["end"]) <= 0.3, turn
    # The last turn (alice/weather) holds a 1.6 s pause between its two sentences: two regions.
    assert len([r for r in regions if within(r, turns[-1])]) == 2
    spoken = sum(t["end"] - t["start"] for t in turns)
    assert 0.75 * spoken <= sum(r.seconds for r in regions) <= spoken


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # silero_vad's use of importlib.resources.path
def test_regions_equal_silero_vads_own(detector, dialogue):
    # silero_vad's Python path (its frame-by-frame ONNX model, its timestamp state machine, no pad).
    from silero_vad import get_speech_timestamps, load_silero_vad

    audio, rate = dialogue
    theirs = get_speech_timestamps(torch.from_numpy(audio), load_silero_vad(onnx=True), sampling_rate=rate, speech_pad_ms=0,
                                   return_seconds=True, time_resolution=3)
    ours = detector.regions(audio, rate)
    assert len(ours) == len(theirs) >= 5
    np.testing.assert_allclose([(r.start, r.end) for r in ours], [(t["start"], t["end"]) for t in theirs], atol=1e-3)


def test_the_same_regions_at_any_input_rate(detector, dialogue):
    from dia2.audio.io import resample

    audio, rate = dialogue
    at_16k = detector.regions(audio, rate)
    at_24k = detector.regions(resample(audio, rate, 24000), 24000)
    assert len(at_16k) == len(at_24k)
    assert all(abs(a.start - b.start) <= FRAME + 1e-6 and abs(a.end - b.end) <= FRAME + 1e-6 for a, b in zip(at_16k, at_24k))


def test_silence_and_noise_hold_no_speech(detector):
    rate = 16000
    assert detector.regions(np.zeros(3 * rate, np.float32), rate) == []
    noise = 0.05 * np.random.default_rng(0).standard_normal(3 * rate).astype(np.float32)
    assert speech_fraction(0.0, 3.0, detector.regions(noise, rate)) < 0.1


def test_running_the_detector_leaves_torch_threads_alone(detector, dialogue):
    # silero_vad's own package sets torch to one thread when imported; this module must not.
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        detector.regions(*dialogue)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_hysteresis_on_given_probabilities():
    config = VadConfig(vad_threshold=0.5, min_speech_seconds=0.1, min_silence_seconds=0.1)
    # 10 frames of speech, a dip to 0.4 (between the thresholds: still speech), 2 frames under 0.35
    # (a pause shorter than 100 ms), 5 frames of silence (ends it, as in silero: the pause is timed
    # from its first frame's start to the current frame's), a 2-frame blip (too short: dropped).
    probs = [0.9] * 10 + [0.4] * 3 + [0.1] * 2 + [0.9] * 5 + [0.1] * 5 + [0.9] * 2 + [0.0] * 6
    regions = speech_regions(np.array(probs), config)
    assert len(regions) == 1
    assert regions[0].start == pytest.approx(0.0) and regions[0].end == pytest.approx(20 * FRAME)
    assert speech_regions(np.array([0.9] * 5), config, seconds=0.1)[0].end == pytest.approx(0.1)  # capped at the audio's end


REGIONS = [SpeechRegion(1.0, 2.0), SpeechRegion(2.3, 3.0), SpeechRegion(5.0, 6.0)]


def test_a_cut_that_starts_inside_speech_moves_out_to_its_edge():
    cut = refine_cut(1.2, 3.05, REGIONS, VadConfig(speech_pad_seconds=0.1, max_boundary_shift=0.5))
    assert cut.reason is None
    assert cut.start == pytest.approx(0.9) and cut.end == pytest.approx(3.1)
    assert cut.speech_seconds == pytest.approx(1.7) and cut.speech_fraction == pytest.approx(1.7 / 2.2)


def test_a_cut_whose_boundary_lies_deep_in_speech_is_refused():
    assert refine_cut(1.7, 3.0, REGIONS, VadConfig(max_boundary_shift=0.5)).reason == SPEECH_AT_START
    assert refine_cut(0.5, 5.2, REGIONS, VadConfig(max_boundary_shift=0.5)).reason == SPEECH_AT_END
    # The speech's edge lies beyond the room the cut has (the previous cut ends at 1.1).
    assert refine_cut(1.2, 2.1, REGIONS, VadConfig(max_boundary_shift=0.5), lo=1.1).reason == SPEECH_AT_START


def test_silence_is_trimmed_to_the_pad_and_never_reaches_other_speech():
    config = VadConfig(speech_pad_seconds=0.25)
    cut = refine_cut(3.5, 7.5, REGIONS, config)  # 1.5 s of silence on each side of the 5-6 s speech
    assert (cut.start, cut.end) == (pytest.approx(4.75), pytest.approx(6.25))
    tight = refine_cut(4.9, 6.05, REGIONS, config, hi=6.1)  # extended to the pad where the room allows
    assert (tight.start, tight.end) == (pytest.approx(4.75), pytest.approx(6.1))
    near = refine_cut(2.3, 3.0, REGIONS, VadConfig(speech_pad_seconds=0.5))  # the pad stops at the speech before
    assert near.start == pytest.approx(2.0) and near.end == pytest.approx(3.5)


def test_a_cut_without_speech_says_so():
    cut = refine_cut(3.2, 4.8, REGIONS)
    assert cut.reason == NO_SPEECH and cut.speech_fraction == 0.0
    assert speech_fraction(0.0, 7.0, REGIONS) == pytest.approx(2.7 / 7.0)
    assert speech_fraction(2.0, 2.0, REGIONS) == 0.0


@pytest.mark.parametrize(
    "options, message",
    [({"vad_threshold": 1.0}, "speech threshold"), ({"speech_pad_seconds": -0.1}, "silence pad"), ({"min_silence_seconds": float("inf")}, "shortest pause")],
)
def test_bad_settings_are_refused(options, message):
    with pytest.raises(VadError, match=message):
        VadConfig(**options)
