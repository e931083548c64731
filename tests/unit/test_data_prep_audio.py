"""Reading recordings of any width and rate piecewise, salvaging damaged files, and chunked transcription."""

import numpy as np
import pytest
import soundfile as sf

from data_prep.audio import Recording, mix
from data_prep.transcribe import transcribe_stream
from tests.helpers.speech import ToneTranscriber, sine


@pytest.mark.parametrize(
    "rate, subtype, channels, tolerance",
    [(8000, "PCM_U8", 1, 0.03), (44100, "PCM_24", 1, 2e-3), (22050, "FLOAT", 1, 2e-3), (48000, "PCM_16", 2, 2e-3), (11025, "PCM_32", 1, 2e-3)],
)
def test_spans_of_any_width_and_rate_come_back_at_the_asked_rate(tmp_path, rate, subtype, channels, tolerance):
    path = tmp_path / "tone.wav"
    mono = sine(2.0, rate)
    sf.write(str(path), np.stack([mono] * channels, axis=1) if channels > 1 else mono, rate, subtype=subtype)
    with Recording(path) as recording:
        assert recording.info.channels == channels and recording.seconds == pytest.approx(2.0, abs=1e-3)
        span = recording.read_span(0.5, 1.25, 24000)
    assert span.samples.shape == (channels, 18000)
    expected = sine(2.0, 24000)[12000:30000]
    assert np.abs(span.samples[0] - expected).max() < tolerance
    assert span.peak == pytest.approx(0.5, abs=0.01) and span.clipped == 0.0


def test_a_span_past_the_end_is_zero_padded(tmp_path):
    path = tmp_path / "short.flac"
    sf.write(str(path), sine(1.0, 16000), 16000)
    with Recording(path) as recording:
        span = recording.read_span(0.5, 1.5, 24000)
    assert span.samples.shape == (1, 24000)
    assert np.abs(span.samples[0, :11000]).max() > 0.4 and not span.samples[0, 12100:].any()


def test_a_truncated_flac_yields_the_audio_before_the_damage(tmp_path):
    path = tmp_path / "cut.flac"
    rng = np.random.default_rng(0)
    audio = np.clip(0.2 * rng.standard_normal(3 * 16000), -0.9, 0.9).astype(np.float32)
    sf.write(str(path), audio, 16000)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    with Recording(path) as recording:
        assert recording.seconds == pytest.approx(3.0)  # what the header claims
        samples = recording.read_frames(0, 3 * 16000)
        assert recording.truncated and 0.5 * 16000 < recording.frames < 3 * 16000
    assert samples.shape == (1, recording.frames)
    np.testing.assert_allclose(samples[0], audio[: recording.frames], atol=1 / 32768)


def test_clipping_and_non_finite_samples_are_measured(tmp_path):
    path = tmp_path / "bad.wav"
    audio = sine(1.0, 16000, level=0.3)
    audio[:160] = 1.0  # 1 % of the samples at full scale
    audio[5000] = np.nan
    sf.write(str(path), audio, 16000, subtype="FLOAT")
    with Recording(path) as recording:
        span = recording.read_span(0.0, 1.0, 16000)
        assert recording.nonfinite
    assert span.clipped == pytest.approx(0.01) and np.isfinite(span.samples).all()


def test_dialogue_channels_are_summed_other_channels_averaged():
    left, right = np.array([0.5, 0.0, 0.2]), np.array([0.0, 0.4, 0.2])
    both = np.stack([left, right])
    np.testing.assert_allclose(mix(both, dialogue=True), [0.5, 0.4, 0.4])
    np.testing.assert_allclose(mix(both, dialogue=False), [0.25, 0.2, 0.2])
    np.testing.assert_allclose(mix(np.stack([left + 0.9, right]), dialogue=True), np.array([1.4, 1.3, 1.3]) / 1.4)  # never clips


def test_chunked_transcription_hears_every_word_once_at_its_time(tmp_path):
    rate, bursts = 16000, []
    audio = np.zeros(150 * rate, np.float32)
    t = 0.3
    for i in range(160):
        freq = 300 + 20 * i
        at = int(t * rate)
        audio[at : at + int(0.3 * rate)] = sine(0.3, rate, freq)
        bursts.append((t, str(freq)))
        t += 1.4 if i % 6 == 5 else 0.6  # segments of six words
        if t > 149:
            break
    path = tmp_path / "long.wav"
    sf.write(str(path), audio, rate, subtype="PCM_16")
    transcriber = ToneTranscriber()
    with Recording(path) as recording:
        heard = transcribe_stream(recording, None, 2, transcriber, chunk_seconds=60, silence_level=0.01)
    assert transcriber.calls >= 3  # it really went chunk by chunk
    assert [w.text for w in heard.words] == [text for _, text in bursts]
    assert all(abs(w.start - start) < 0.02 for w, (start, _) in zip(heard.words, bursts))
    assert {w.speaker for w in heard.words} == {2} and heard.peak == pytest.approx(0.5, abs=0.01)


def test_silence_is_never_transcribed(tmp_path):
    path = tmp_path / "quiet.wav"
    sf.write(str(path), np.full(3 * 16000, 1e-4, np.float32), 16000)
    transcriber = ToneTranscriber()
    with Recording(path) as recording:
        heard = transcribe_stream(recording, None, 1, transcriber, 60, silence_level=0.003)
    assert transcriber.calls == 0 and heard.words == [] and heard.peak == pytest.approx(1e-4, rel=0.1)
