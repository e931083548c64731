"""dia2.audio.io.read_audio: what a reference, a prefix or an upload read from a file becomes
(writing is covered with the encoders: tests/unit/test_encode.py)."""

import numpy as np
import pytest

from dia2.audio.io import AudioFileError, read_audio


def _tone(hz: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _level(samples: np.ndarray, rate: int, hz: float) -> float:
    """Amplitude of the `hz` component of samples [S]."""
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64))) * 2 / len(samples)
    return float(spectrum[int(round(hz * len(samples) / rate))])


def test_a_stereo_file_is_read_as_the_mean_of_its_channels(tmp_path):
    import soundfile as sf

    rate = 48000
    left, right = _tone(300, rate), _tone(700, rate)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.stack([left, right], axis=1), rate, subtype="FLOAT")
    np.testing.assert_allclose(read_audio(path, rate), (left + right) / 2, atol=1e-7)
    # Resampled to the model's rate: the same second, both channels' tones at half their level.
    mono = read_audio(path, 24000)
    assert mono.dtype == np.float32 and len(mono) == 24000
    assert _level(mono, 24000, 300) == pytest.approx(0.2, abs=0.01)
    assert _level(mono, 24000, 700) == pytest.approx(0.2, abs=0.01)
    # A voice recorded on one channel only is heard, not dropped.
    sf.write(str(path), np.stack([np.zeros_like(right), right], axis=1), rate, subtype="FLOAT")
    assert _level(read_audio(path, 24000), 24000, 700) == pytest.approx(0.2, abs=0.01)


def test_missing_empty_and_non_audio_files_are_refused(tmp_path):
    import soundfile as sf

    with pytest.raises(AudioFileError, match="not found"):
        read_audio(tmp_path / "nowhere.wav", 24000)
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(AudioFileError, match="cannot read .*text.wav as audio"):
        read_audio(tmp_path / "text.wav", 24000)
    sf.write(str(tmp_path / "empty.wav"), np.zeros((0, 1), np.float32), 24000)
    with pytest.raises(AudioFileError, match="holds no decodable audio"):
        read_audio(tmp_path / "empty.wav", 24000)
