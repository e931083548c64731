"""dia2.audio.encode: every served format decodes back (streamed and whole), lossless ones exactly;
speed changes tempo, not pitch; bytes flow before finish; and `dia2-infer` writes mp3."""

import io
import struct

import av
import numpy as np
import pytest

from dia2.audio.encode import (
    FORMATS,
    AudioEncoder,
    EncodeError,
    encode,
    format_for_path,
)
from dia2.audio.io import write_audio

RATE = 24000
PIECE = 1920  # one Mimi frame, the size a server pushes
LOSSLESS = ("wav", "flac", "pcm")


def tone(seconds: float, seed: int = 0) -> np.ndarray:
    """A 440 Hz tone with a little seeded noise, float32 [S]."""
    t = np.arange(int(seconds * RATE)) / RATE
    noise = np.random.default_rng(seed).normal(0.0, 0.01, t.shape)
    return (0.5 * np.sin(2 * np.pi * 440 * t) + noise).astype(np.float32)


def quantised(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, -1, 1) * 32767).astype(np.int16)


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int, int]:
    """(samples [S] as decoded, sample rate, channels); pcm has no header, so numpy reads it."""
    if fmt == "pcm":
        return np.frombuffer(data, dtype="<i2"), RATE, 1
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = [frame.to_ndarray() for frame in container.decode(stream)]
        return np.concatenate(frames, axis=1).reshape(-1), stream.rate, stream.channels


def stream(fmt: str, x: np.ndarray, speed: float = 1.0) -> list[bytes]:
    """What each push of a PIECE-sample piece of x returned, then what finish returned."""
    encoder = AudioEncoder(fmt, RATE, speed=speed)
    return [encoder.push(x[start:start + PIECE]) for start in range(0, len(x), PIECE)] + [encoder.finish()]


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize("streaming", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format_decodes_back_to_the_input(fmt, streaming):
    x = tone(1.5)
    data = b"".join(stream(fmt, x)) if streaming else encode(x, RATE, fmt)
    samples, rate, channels = decode(data, fmt)
    assert rate == (48000 if fmt == "opus" else RATE) and channels == 1
    assert abs(len(samples) / rate - 1.5) < 0.15
    if fmt in LOSSLESS:
        np.testing.assert_array_equal(samples, quantised(x))


def test_streamed_wav_says_unknown_sizes_and_whole_wav_true_ones():
    x = tone(1.5)
    streamed, whole = b"".join(stream("wav", x)), encode(x, RATE, "wav")
    assert streamed[:4] == b"RIFF" and streamed.count(b"RIFF") == 1
    assert struct.unpack("<I", streamed[4:8])[0] == 0xFFFFFFFF
    assert streamed[36:40] == b"data" and struct.unpack("<I", streamed[40:44])[0] == 0xFFFFFFFF
    assert struct.unpack("<I", whole[4:8])[0] == len(whole) - 8
    assert struct.unpack("<I", whole[40:44])[0] == len(whole) - 44 == 2 * len(x)
    assert streamed[44:] == whole[44:]


@pytest.mark.parametrize("rate", [RATE, 16000])
@pytest.mark.parametrize("streaming", [False, True], ids=["whole", "streamed"])
def test_every_wav_header_field_is_right_and_strict_readers_agree(rate, streaming):
    """Lenient decoders (PyAV, and even `wave` and soundfile) ignore the byte rate and block
    align, so each field is read out of the header here: 16-bit mono PCM at `rate`."""
    import wave

    import soundfile as sf

    x = tone(0.5)
    if streaming:
        encoder = AudioEncoder("wav", rate)
        data = b"".join(encoder.push(x[i:i + PIECE]) for i in range(0, len(x), PIECE)) + encoder.finish()
    else:
        data = encode(x, rate, "wav")
    channels, bits = 1, 16
    riff, riff_size, wave_id, fmt_id, fmt_size = struct.unpack("<4sI4s4sI", data[:20])
    audio_format, n_channels, sample_rate, byte_rate, block_align, bits_per_sample = struct.unpack("<HHIIHH", data[20:36])
    data_id, data_size = struct.unpack("<4sI", data[36:44])
    assert (riff, wave_id, fmt_id, fmt_size, data_id) == (b"RIFF", b"WAVE", b"fmt ", 16, b"data")
    assert (audio_format, n_channels, sample_rate, bits_per_sample) == (1, channels, rate, bits)
    assert byte_rate == rate * channels * bits // 8
    assert block_align == channels * bits // 8
    samples = len(data) - 44
    assert (riff_size, data_size) == ((0xFFFFFFFF, 0xFFFFFFFF) if streaming else (36 + samples, samples))
    with wave.open(io.BytesIO(data)) as reader:
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (channels, bits // 8, rate)
        if not streaming:
            assert reader.getnframes() == len(x)
        np.testing.assert_array_equal(np.frombuffer(reader.readframes(len(x) + 1), "<i2"), quantised(x))
    info = sf.info(io.BytesIO(data))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (rate, channels, "PCM_16", len(x))
    np.testing.assert_array_equal(sf.read(io.BytesIO(data), dtype="int16")[0], quantised(x))


def test_float_input_is_clipped_before_16_bit():
    x = np.array([-3.0, -1.0, 0.0, 0.5, 1.0, 2.5], dtype=np.float32)
    np.testing.assert_array_equal(np.frombuffer(encode(x, RATE, "pcm"), "<i2"), [-32767, -32767, 0, 16384, 32767, 32767])


@pytest.mark.parametrize("streaming", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("speed", [0.25, 0.5, 2.0, 4.0])
def test_speed_changes_tempo_not_pitch(speed, streaming):
    x = tone(1.5)
    data = b"".join(stream("wav", x, speed)) if streaming else encode(x, RATE, "wav", speed=speed)
    samples, rate, _ = decode(data, "wav")
    assert len(samples) / rate == pytest.approx(1.5 / speed, rel=0.10)
    assert peak_hz(samples, rate) == pytest.approx(440, rel=0.05)


def test_speed_works_through_a_lossy_codec():
    samples, rate, _ = decode(b"".join(stream("mp3", tone(1.5), speed=2.0)), "mp3")
    assert len(samples) / rate == pytest.approx(0.75, abs=0.1)
    assert peak_hz(samples, rate) == pytest.approx(440, rel=0.05)


@pytest.mark.parametrize("fmt,speed", [(fmt, 1.0) for fmt in FORMATS] + [("mp3", 2.0), ("opus", 0.5)])
def test_bytes_flow_before_finish(fmt, speed):
    *pushed, last = stream(fmt, tone(5.0), speed)
    first = next((index for index, chunk in enumerate(pushed) if chunk), None)
    early, full = (decode(data, fmt) for data in (b"".join(pushed), b"".join(pushed) + last))
    early_seconds, full_seconds = (len(samples) / rate for samples, rate, _ in (early, full))
    # Codecs hold back a frame or two and Ogg a page or two, never the bulk of the stream.
    assert first is not None and first < len(pushed) // 4, first
    assert early_seconds > full_seconds / 2, (early_seconds, full_seconds)
    assert full_seconds == pytest.approx(5.0 / speed, abs=0.3)


def test_empty_pushes_are_fine():
    encoder = AudioEncoder("flac", RATE)
    data = encoder.push(np.zeros(0, np.float32)) + encoder.push(tone(0.5)) + encoder.push(np.zeros(0)) + encoder.finish()
    np.testing.assert_array_equal(decode(data, "flac")[0], quantised(tone(0.5)))
    with pytest.raises(RuntimeError, match="finished"):
        encoder.push(tone(0.1))


@pytest.mark.parametrize("kwargs,message", [
    ({"format": "ogg-vorbis"}, "mp3, opus, aac, flac, wav, pcm"),
    ({"speed": 0.1}, "speed 0.1 is out of range; give a speed from 0.25 to 4.0"),
    ({"speed": 5.0}, "speed 5.0 is out of range"),
    ({"sample_rate": 0}, "sample_rate 0"),
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(EncodeError, match=message):
        AudioEncoder(**{"format": "mp3", "sample_rate": RATE, **kwargs})


def test_format_for_path():
    assert [format_for_path(f"a{ext}") for ext in (".MP3", ".ogg", ".opus", ".aac", ".flac", ".wav", ".raw", ".pcm")] == [
        "mp3", "opus", "opus", "aac", "flac", "wav", "pcm", "pcm"]
    with pytest.raises(EncodeError, match=r"x.xyz: unknown audio extension '.xyz'; use one of .mp3, .opus, .ogg"):
        format_for_path("x.xyz")


def test_stereo_waveform_is_refused():
    with pytest.raises(EncodeError, match=r"shape \(2, 10\) is not mono"):
        encode(np.zeros((2, 10), np.float32), RATE, "wav")


@pytest.mark.parametrize("ext,codec", [(".mp3", "mp3"), (".opus", "opus"), (".ogg", "opus"), (".aac", "aac"), (".flac", "flac"), (".wav", "pcm_s16le")])
def test_write_audio_writes_every_extension(tmp_path, ext, codec):
    path = write_audio(tmp_path / "sub" / f"speech{ext}", tone(1.0), RATE)
    with av.open(str(path)) as container:
        assert container.streams.audio[0].codec_context.name.startswith(codec)  # mp3 decodes as "mp3float"
    if ext in (".wav", ".flac", ".ogg"):
        # soundfile (what read_audio and the CLI tests use) still reads them, at 24 kHz.
        import soundfile as sf

        data, rate = sf.read(str(path))
        assert rate == RATE and abs(len(data) - RATE) < RATE * 0.05


def test_cli_writes_mp3(tmp_path, monkeypatch, capsys):
    from dia2.cli import main

    monkeypatch.setenv("DIA2_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "speech.mp3"
    assert main(["--tiny", "--text", "[S1] Hello there.", "--seed", "0", "--max-frames", "30", str(out)]) == 0
    with av.open(str(out)) as container:
        assert container.format.name == "mp3" and container.streams.audio[0].rate == RATE
        assert sum(frame.samples for frame in container.decode(audio=0)) > RATE // 4


def test_cli_lists_the_extensions_it_takes(tmp_path, capsys):
    from dia2.cli import main

    with pytest.raises(SystemExit):
        main(["--tiny", "--text", "hi", str(tmp_path / "out.mp4")])
    assert "unknown extension '.mp4'; use .mp3, .opus, .ogg, .aac, .flac, .wav, .pcm, .raw" in capsys.readouterr().err
