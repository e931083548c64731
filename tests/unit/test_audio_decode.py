"""One reader for every container (dia2.audio.io.decode_audio_file, PyAV): the same speech in
wav, flac, aiff, mp3, m4a, mp4/mov (with video), webm/mkv/ogg Opus and wma decodes to the same
length within a frame and the same audio; broken files and videos without sound say so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dia2.audio.io import AudioFileError, decode_audio_file, probe_audio_file
from tests.fixtures.make_recordings import CONTAINERS

RATE = 24000
FRAME = 1920  # samples per Mimi frame at 24 kHz
# ffmpeg's own WMA encode/decode round trip starts 512 samples (at 16 kHz) into the audio: the
# encoder does not mark its delay. Every other codec marks its priming and lands exactly.
EXPECTED_LAG = {"wma": -512 * RATE // 16000}


def _lag(reference: np.ndarray, other: np.ndarray, search: int = 2 * FRAME) -> int:
    """Samples `other` is late against `reference`: other[i] matches reference[i - lag]."""
    scores = np.correlate(other, reference[search:-search], mode="valid")
    return int(np.argmax(scores)) - search


def _aligned(reference: np.ndarray, other: np.ndarray, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """The two signals' common stretch once `other` is moved back by `lag`."""
    a, b = (reference, other[lag:]) if lag >= 0 else (reference[-lag:], other)
    n = min(len(a), len(b))
    return a[:n], b[:n]


@pytest.fixture(scope="module")
def reference(recordings) -> np.ndarray:
    return decode_audio_file(recordings["containers"]["wav"], RATE).waveform


@pytest.mark.parametrize("extension", sorted(CONTAINERS))
def test_the_same_speech_in_every_container_decodes_alike(recordings, reference, extension):
    decoded = decode_audio_file(recordings["containers"][extension], RATE)
    assert decoded.samples.shape[0] == 1 and decoded.samples.dtype == np.float32 and decoded.sample_rate == RATE
    assert abs(decoded.samples.shape[1] - len(reference)) < FRAME, (extension, decoded.samples.shape, len(reference))
    lag = _lag(reference, decoded.waveform)
    assert abs(lag - EXPECTED_LAG.get(extension, 0)) <= 24, (extension, lag)  # within 1 ms of where it belongs
    assert np.corrcoef(*_aligned(reference, decoded.waveform, lag))[0, 1] > 0.98, extension  # lossy at 16 kHz mono: 0.989 (mp3) to 1.0


@pytest.mark.parametrize("extension", ["mp4", "mov", "mkv"])
def test_a_video_gives_its_first_audio_stream(recordings, extension):
    import av

    path = recordings["containers"][extension]
    with av.open(path) as container:
        assert container.streams.video and container.streams.audio
    info = probe_audio_file(path)
    assert info.codec in ("aac", "opus") and info.channels == 1
    assert abs(info.seconds - recordings["speech_seconds"]) < FRAME / RATE


@pytest.mark.parametrize("extension", ["wav", "flac", "mp3", "m4a", "webm", "mkv", "ogg"])
def test_a_span_read_by_seeking_equals_the_same_span_of_the_whole_file(recordings, extension):
    path = recordings["containers"][extension]
    whole = decode_audio_file(path, RATE).waveform
    span = decode_audio_file(path, RATE, start=1.3, stop=2.1).waveform
    assert len(span) == round(0.8 * RATE)
    first = round(1.3 * RATE)
    same = whole[first - FRAME : first + len(span) + FRAME]
    lag = _lag(same, np.concatenate([np.zeros(FRAME, np.float32), span, np.zeros(FRAME, np.float32)]), search=FRAME // 2)
    # Placed by timestamps after a seek: exact where they count samples, within a millisecond
    # (24 samples) where they count milliseconds (webm, mkv).
    assert abs(lag) <= 24
    a, b = _aligned(same[FRAME + 200 : -FRAME - 200], span[200:-200], lag)
    assert np.abs(a - b).max() < 5e-3


def test_channels_are_kept_or_mixed_and_levels_are_measured_as_recorded(tmp_path):
    t = np.arange(16000) / 16000
    left, right = 0.5 * np.sin(2 * np.pi * 220 * t), np.clip(1.2 * np.sin(2 * np.pi * 330 * t), -1, 1)
    path = tmp_path / "stereo.flac"
    sf.write(str(path), np.stack([left, right], axis=1), 16000, subtype="PCM_24")
    both = decode_audio_file(path, RATE, mono=False)
    assert both.samples.shape == (2, RATE) and both.stream.channels == 2
    assert np.corrcoef(both.samples[0][100:-100], decode_audio_file(path, RATE).waveform[100:-100])[0, 1] < 0.9
    mono = decode_audio_file(path, RATE)
    assert mono.samples.shape == (1, RATE)
    np.testing.assert_allclose(mono.waveform, both.samples.mean(axis=0), atol=1e-6)
    assert both.peak == pytest.approx(1.0, abs=1e-4)
    assert 0.1 < both.clipped < 0.3  # the right channel's flattened tops, over both channels' samples


def test_bytes_decode_like_the_file(recordings, reference):
    data = Path(recordings["containers"]["m4a"]).read_bytes()
    decoded = decode_audio_file(data, RATE, label="upload 'memo.m4a'")
    np.testing.assert_array_equal(decoded.samples, decode_audio_file(recordings["containers"]["m4a"], RATE).samples)
    with pytest.raises(AudioFileError, match="upload 'memo.m4a'"):
        decode_audio_file(data[: len(data) // 3], RATE, label="upload 'memo.m4a'")


@pytest.mark.parametrize(
    "name, message",
    [
        ("video_only.mp4", "is a video without an audio stream"),
        ("truncated.m4a", "cannot read .*truncated.m4a as audio or video .*damaged or not a media file"),
        ("garbled.m4a", "cannot read .*garbled.m4a as audio or video .*damaged or not a media file"),
    ],
)
def test_bad_files_give_a_clear_error(recordings, name, message):
    path = Path(recordings["folder"]) / "bad" / name
    with pytest.raises(AudioFileError, match=message):
        decode_audio_file(path, RATE)
    with pytest.raises(AudioFileError, match=message):
        probe_audio_file(path)


def test_missing_and_non_media_files_and_bad_arguments(tmp_path, recordings):
    with pytest.raises(AudioFileError, match="not found"):
        decode_audio_file(tmp_path / "nothing.m4a", RATE)
    text = tmp_path / "notes.mp3"
    text.write_text("these are my notes, not a recording\n" * 20)
    with pytest.raises(AudioFileError, match="notes.mp3"):
        decode_audio_file(text, RATE)
    with pytest.raises(AudioFileError, match="start < stop"):
        decode_audio_file(recordings["containers"]["wav"], RATE, start=2.0, stop=1.0)
    with pytest.raises(AudioFileError, match="sample_rate"):
        decode_audio_file(recordings["containers"]["wav"], 0)
    with pytest.raises(AudioFileError, match="no decodable audio from 100 s"):
        decode_audio_file(recordings["containers"]["flac"], RATE, start=100.0)


def test_recordings_in_any_container_are_found_and_read_by_prep_and_eval_alike(tmp_path, recordings):
    """A folder of phone memos (m4a), a video's sound (mp4), a browser recording (webm) and an mp3:
    data prep lists them all, and dia2-eval reads each as the same speech as the wav."""
    import shutil

    from data_prep.config import SpeakerOptions
    from data_prep.sources import collect_sources
    from dia2.evaluation.inputs import read_references

    root = tmp_path / "memos"
    root.mkdir()
    for ext in ("m4a", "mp4", "webm", "mp3", "wav"):
        shutil.copy(recordings["containers"][ext], root / f"memo.{ext}" if ext == "wav" else root / f"memo {ext}.{ext}")
    prep = collect_sources(root, SpeakerOptions())
    assert [f.name for f in prep.files] == ["memo m4a.m4a", "memo mp3.mp3", "memo mp4.mp4", "memo webm.webm", "memo.wav"]
    refs = read_references(root, 24000)
    wav = decode_audio_file(root / "memo.wav", 24000).waveform
    assert [r.name for r in refs] == ["memo m4a", "memo mp3", "memo mp4", "memo webm", "memo"]
    assert all(abs(len(r.waveform) - len(wav)) < 1920 for r in refs)
