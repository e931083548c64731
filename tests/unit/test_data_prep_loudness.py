"""Loudness normalisation (data_prep.loudness): BS.1770-4 integrated loudness, a -23 LUFS target
reached from -40 and -10 LUFS recordings without clipping, true peaks limited under -1 dBTP."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_prep.config import FilterOptions
from data_prep.loudness import LoudnessConfig, LoudnessError, integrated_loudness, normalize_loudness, true_peak


def _read(recordings, name: str) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(str(Path(recordings["folder"]) / name), dtype="float32")
    return audio, rate


def test_a_full_scale_sine_reads_as_bs1770_says():
    # BS.1770-4 calibration: a 997 Hz sine at 0 dBFS peak in one channel reads -3.01 LKFS.
    rate = 48000
    sine = np.sin(2 * np.pi * 997 * np.arange(5 * rate) / rate)
    assert integrated_loudness(sine, rate) == pytest.approx(-3.01, abs=0.05)
    assert integrated_loudness(0.1 * sine, rate) == pytest.approx(-23.01, abs=0.05)


def test_true_peak_finds_the_peak_between_samples():
    # A sine at a quarter of the rate, sampled 45 degrees off its crests: every sample is at 0.707,
    # the waveform between them reaches 1.0 (+3 dB over the sample peak).
    rate = 48000
    sine = np.sin(2 * np.pi * (rate / 4) * np.arange(rate) / rate + np.pi / 4)
    sine *= np.clip(np.minimum(np.arange(rate), np.arange(rate)[::-1]) / 480, 0, 1)  # 10 ms fades: no edge ringing
    assert np.abs(sine).max() == pytest.approx(math.sqrt(0.5), abs=1e-6)
    assert true_peak(sine, rate) == pytest.approx(1.0, abs=0.005)


@pytest.mark.parametrize("name, level, flags", [("quiet.wav", -40.0, {"quiet"}), ("loud.wav", -10.0, {"clipped"})])
def test_quiet_and_loud_recordings_reach_the_target_without_clipping(recordings, name, level, flags):
    audio, rate = _read(recordings, name)
    assert integrated_loudness(audio, rate) == pytest.approx(level, abs=0.5)
    result = normalize_loudness(audio, rate)
    assert result.input_lufs == pytest.approx(level, abs=0.5)
    assert abs(result.output_lufs - -23.0) <= 1.0
    assert abs(integrated_loudness(result.waveform, rate) - -23.0) <= 1.0
    assert result.gain_db == pytest.approx(-23.0 - result.input_lufs, abs=1e-6)
    assert result.true_peak_dbtp <= -1.0 + 1e-3 and true_peak(result.waveform, rate) <= 10 ** (-1 / 20) + 1e-4
    assert np.abs(result.waveform).max() < 1.0
    assert result.waveform.shape == audio.shape and result.waveform.dtype == np.float32
    assert {flag for flag in ("quiet", "clipped") if (result.quiet if flag == "quiet" else result.is_clipped(FilterOptions.max_clipped))} == flags


def test_a_tap_on_the_microphone_is_limited_not_clipped_and_the_speech_stays_on_target(recordings):
    audio, rate = _read(recordings, "quiet.wav")  # -40 LUFS speech with a 0.25 tap: +17 dB would take it to 1.8
    assert 10 ** (normalize_loudness(audio, rate).gain_db / 20) * np.abs(audio).max() > 1.5
    result = normalize_loudness(audio, rate)
    assert result.limited_db > 4.0
    assert result.true_peak_dbtp <= -1.0 + 1e-3
    assert abs(result.output_lufs - -23.0) <= 0.2  # a few milliseconds around the tap are turned down, not the speech
    # Away from the tap the limiter leaves the gain alone.
    tap = int(0.5 * rate)
    gain = 10 ** (result.gain_db / 20)
    np.testing.assert_allclose(result.waveform[tap + rate // 10 :], audio[tap + rate // 10 :] * gain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.waveform[: tap - rate // 50], audio[: tap - rate // 50] * gain, rtol=1e-5, atol=1e-6)


def test_other_targets_and_stereo(recordings):
    audio, rate = _read(recordings, "clean.wav")
    podcast = normalize_loudness(audio, rate, LoudnessConfig(target_lufs=-16.0))
    assert abs(podcast.output_lufs - -16.0) <= 1.0 and podcast.true_peak_dbtp <= -1.0 + 1e-3
    stereo = np.stack([audio, 0.5 * audio])
    result = normalize_loudness(stereo, rate)
    assert result.waveform.shape == stereo.shape
    assert abs(result.output_lufs - -23.0) <= 1.0
    np.testing.assert_allclose(result.waveform[1], 0.5 * result.waveform[0], atol=1e-6)  # one gain for both channels


def test_a_cut_that_needs_much_gain_is_flagged(recordings):
    audio, rate = _read(recordings, "quiet.wav")
    assert normalize_loudness(audio, rate, LoudnessConfig(max_gain_db=10.0)).excess_gain
    assert not normalize_loudness(audio, rate).excess_gain  # 17 dB, under the default 20


def test_silence_is_left_alone():
    silence = np.zeros(16000, np.float32)
    result = normalize_loudness(silence, 16000)
    assert result.gain_db == 0.0 and result.input_lufs == -math.inf and result.quiet
    np.testing.assert_array_equal(result.waveform, silence)


def test_short_audio_is_measured_as_one_block():
    rate = 16000
    burst = 0.1 * np.sin(2 * np.pi * 997 * np.arange(rate // 5) / rate)  # 200 ms, under one 400 ms block
    assert integrated_loudness(burst, rate) == pytest.approx(-23.0, abs=0.3)
    with pytest.raises(LoudnessError, match="empty audio"):
        integrated_loudness(np.zeros(0, np.float32), rate)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"target_lufs": 3.0}, "loudness target 3 LUFS is not below 0 LUFS"),
        ({"target_lufs": 0.0}, "not below 0 LUFS"),
        ({"ceiling_dbtp": 0.5}, "ceiling 0.5 dBTP is above full scale"),
        ({"target_lufs": -0.5, "ceiling_dbtp": -1.0}, "above the true-peak ceiling"),
        ({"target_lufs": float("nan")}, "finite"),
    ],
)
def test_impossible_settings_are_refused(options, message):
    with pytest.raises(LoudnessError, match=message):
        LoudnessConfig(**options)
