"""Audio encodings for files and streams: mp3, Ogg Opus, AAC (ADTS), FLAC, wav and raw pcm.

One `AudioEncoder` serves both uses: streamed (a server sends each piece's bytes while the audio is
still being generated) and whole-file (`encode`, `dia2.audio.io.write_audio`). The formats and their
content types are OpenAI's speech `response_format`s. Containers and codecs come from PyAV (ffmpeg's
libraries, no ffmpeg binary needed); wav and pcm are written here, being a 44-byte header and raw
16-bit samples. `speed` changes the tempo without changing the pitch (ffmpeg's `atempo` filter).
"""

from __future__ import annotations

import io
import os
import struct
from fractions import Fraction
from pathlib import Path

import numpy as np

from dia2.errors import Dia2Error

FORMATS: dict[str, str] = {
    "mp3": "audio/mpeg",
    # Ogg Opus is sent as audio/opus, as OpenAI's speech API sends response_format=opus: the
    # openai package (3.63) names the formats but not their content types, so the API's own answer
    # is the contract clients were written against; players sniff the Ogg container either way.
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
# `.ogg` is Ogg Opus, the one Ogg codec this module writes, so a file and a stream agree.
EXTENSIONS: dict[str, str] = {
    ".mp3": "mp3", ".opus": "opus", ".ogg": "opus", ".aac": "aac",
    ".flac": "flac", ".wav": "wav", ".pcm": "pcm", ".raw": "pcm",
}
SPEED_RANGE = (0.25, 4.0)
# format -> (PyAV container, encoders to try in order: builds differ in which they ship)
_CONTAINERS = {
    "mp3": ("mp3", ("libmp3lame", "mp3")),
    "opus": ("ogg", ("libopus", "opus")),
    "aac": ("adts", ("aac",)),
    "flac": ("flac", ("flac",)),
}
# 0xFFFFFFFF as the RIFF and data sizes means "length unknown": what ffmpeg and OpenAI send when
# they stream wav, and what ffmpeg's reader takes as "read to the end".
_UNKNOWN_SIZE = 0xFFFFFFFF


class EncodeError(Dia2Error, ValueError):
    """An audio format, speed or waveform the encoder cannot take; the message names it and the fix."""


class AudioEncoder:
    """Streaming encoder: push waveform pieces as they are generated, get the bytes ready so far.

    streaming=True hands back bytes from `push` as soon as the codec has them (a streamed wav carries
    "unknown" sizes in its header); streaming=False returns one complete file from `finish` (true wav
    sizes, FLAC STREAMINFO totals, mp3 Xing header), which is what `encode` uses.
    """

    def __init__(self, format: str, sample_rate: int, speed: float = 1.0, streaming: bool = True) -> None:
        if format not in FORMATS:
            raise EncodeError(f"unknown audio format {format!r}; use one of {', '.join(FORMATS)}")
        if not SPEED_RANGE[0] <= speed <= SPEED_RANGE[1]:
            raise EncodeError(f"speed {speed} is out of range; give a speed from {SPEED_RANGE[0]} to {SPEED_RANGE[1]} (1.0 = unchanged)")
        if int(sample_rate) != sample_rate or sample_rate <= 0:
            raise EncodeError(f"sample_rate {sample_rate} must be a positive whole number of Hz (Dia2 speaks at 24000)")
        self.format = format
        self.content_type = FORMATS[format]
        # speed 1.0 skips the filter so the samples reach the codec untouched.
        self._tempo = _Tempo(speed, int(sample_rate)) if speed != 1.0 else None
        writer = _RawWriter if format in ("wav", "pcm") else _AvWriter
        self._writer = writer(format, int(sample_rate), streaming)
        self._finished = False

    def push(self, waveform: np.ndarray) -> bytes:
        """Encode mono float samples [S] (any length, 0 included); returns the bytes ready so far (may be b"")."""
        self._check_open()
        samples = _mono(waveform)
        if self._tempo is not None:
            samples = self._tempo.push(samples)
        return self._writer.write(_to_int16(samples))

    def finish(self) -> bytes:
        """Flush the filter and codec; returns the remaining bytes. The encoder is spent afterwards."""
        self._check_open()
        self._finished = True
        tail = b"" if self._tempo is None else self._writer.write(_to_int16(self._tempo.flush()))
        return tail + self._writer.close()

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError("this AudioEncoder has finished; make a new one for another stream")


def encode(waveform: np.ndarray, sample_rate: int, format: str, speed: float = 1.0) -> bytes:
    """One whole file of `format` from mono float samples [S] in [-1, 1] at `sample_rate`."""
    encoder = AudioEncoder(format, sample_rate, speed=speed, streaming=False)
    return encoder.push(waveform) + encoder.finish()


def format_for_path(path: str | os.PathLike) -> str:
    """The format a file's extension names (`.ogg` is Ogg Opus, `.raw` is pcm)."""
    suffix = Path(path).suffix.lower()
    if suffix not in EXTENSIONS:
        raise EncodeError(f"{path}: unknown audio extension '{suffix}'; use one of {', '.join(EXTENSIONS)}")
    return EXTENSIONS[suffix]


def _mono(waveform: np.ndarray) -> np.ndarray:
    """float32 [S], silence for NaN, clipped to [-1, 1]; [1, S] and the like are accepted."""
    samples = np.asarray(waveform, dtype=np.float32)
    if samples.ndim != 1:
        if samples.size != samples.shape[-1]:
            raise EncodeError(f"waveform of shape {tuple(samples.shape)} is not mono; give one channel of samples [S]")
        samples = samples.reshape(-1)
    return np.clip(np.nan_to_num(samples, nan=0.0), -1.0, 1.0)


def _to_int16(samples: np.ndarray) -> np.ndarray:
    # Clip again: atempo's overlap-add can overshoot full scale by a hair.
    return np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)


def _wav_header(sample_rate: int, data_bytes: int | None) -> bytes:
    """44-byte RIFF header for 16-bit mono PCM; data_bytes None writes the "unknown" sizes."""
    riff = _UNKNOWN_SIZE if data_bytes is None else 36 + data_bytes
    data = _UNKNOWN_SIZE if data_bytes is None else data_bytes
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI", b"RIFF", riff, b"WAVE", b"fmt ", 16, 1, 1,
        sample_rate, sample_rate * 2, 2, 16, b"data", data,
    )


class _RawWriter:
    """wav or pcm (s16le). Whole-file mode holds the samples until close, when the wav sizes are known."""

    def __init__(self, format: str, sample_rate: int, streaming: bool) -> None:
        self._wav, self._rate, self._streaming = format == "wav", sample_rate, streaming
        self._held = bytearray()
        self._started = False

    def write(self, pcm: np.ndarray) -> bytes:
        data = pcm.astype("<i2").tobytes()
        if not self._streaming:
            self._held += data
            return b""
        if self._wav and not self._started:
            data = _wav_header(self._rate, None) + data
        self._started = True
        return data

    def close(self) -> bytes:
        if self._streaming:
            return self.write(np.empty(0, np.int16))  # the header alone, when nothing was pushed
        header = _wav_header(self._rate, len(self._held)) if self._wav else b""
        return header + bytes(self._held)


class _Sink:
    """A write-only file for PyAV: without `seek`, muxers write headers up front and flush each packet."""

    def __init__(self) -> None:
        self._data = bytearray()

    def write(self, data: bytes) -> int:
        self._data += data
        return len(data)

    def take(self) -> bytes:
        data = bytes(self._data)
        self._data.clear()
        return data


class _AvWriter:
    """mp3 / Ogg Opus / ADTS AAC / FLAC through PyAV; input is s16 mono frames at `sample_rate`."""

    def __init__(self, format: str, sample_rate: int, streaming: bool) -> None:
        import av

        container, candidates = _CONTAINERS[format]
        codec = _encoder(format, candidates)
        # A whole file goes to a seekable buffer so FLAC and mp3 can go back and fill in their totals.
        self._out: _Sink | io.BytesIO = _Sink() if streaming else io.BytesIO()
        self._container = av.open(self._out, "w", format=container)
        # PyAV's encoder resamples the frames to the codec's rate and cuts them to its frame size.
        rate = _codec_rate(codec, sample_rate)
        self._stream = self._container.add_stream(codec, rate=rate, layout="mono")
        self._rate, self._pts = sample_rate, 0

    def write(self, pcm: np.ndarray) -> bytes:
        if len(pcm):
            import av

            frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = self._rate, self._pts, Fraction(1, self._rate)
            self._pts += len(pcm)
            self._mux(frame)
        return self._out.take() if isinstance(self._out, _Sink) else b""

    def close(self) -> bytes:
        self._mux(None)
        self._container.close()
        return self._out.take() if isinstance(self._out, _Sink) else self._out.getvalue()

    def _mux(self, frame: object) -> None:
        for packet in self._stream.encode(frame):
            self._container.mux(packet)


def _encoder(format: str, candidates: tuple[str, ...]) -> str:
    import av

    for name in candidates:
        try:
            av.Codec(name, "w")
        except (av.error.FFmpegError, ValueError):
            continue
        return name
    raise EncodeError(f"this PyAV build has no {format} encoder ({' or '.join(candidates)}); pick another format or install a full PyAV wheel")


def _codec_rate(codec: str, sample_rate: int) -> int:
    """`sample_rate` if the codec takes it (Opus takes 48/24/16/12/8 kHz), else the next rate up it takes."""
    import av

    rates = av.Codec(codec, "w").audio_rates
    if not rates or sample_rate in rates:
        return sample_rate
    return min((r for r in rates if r >= sample_rate), default=max(rates))


class _Tempo:
    """Tempo change without pitch change, streaming: ffmpeg's atempo filters in a PyAV graph (float32 [S] in and out)."""

    def __init__(self, speed: float, sample_rate: int) -> None:
        from av.filter import Graph

        self._graph, self._rate, self._pts = Graph(), sample_rate, 0
        nodes = [self._graph.add_abuffer(format="flt", sample_rate=sample_rate, layout="mono", time_base=f"1/{sample_rate}")]
        nodes += [self._graph.add("atempo", f"tempo={stage!r}") for stage in _tempo_stages(speed)]
        nodes.append(self._graph.add("abuffersink"))
        self._graph.link_nodes(*nodes).configure()

    def push(self, samples: np.ndarray) -> np.ndarray:
        if len(samples):
            import av

            frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = self._rate, self._pts, Fraction(1, self._rate)
            self._pts += len(samples)
            self._graph.push(frame)
        return self._pull()

    def flush(self) -> np.ndarray:
        self._graph.push(None)
        return self._pull()

    def _pull(self) -> np.ndarray:
        import av

        pieces = []
        while True:
            try:
                frame = self._graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                break
            pieces.append(frame.to_ndarray().reshape(-1).astype(np.float32))
        return np.concatenate(pieces) if pieces else np.empty(0, np.float32)


def _tempo_stages(speed: float) -> list[float]:
    """atempo factors whose product is `speed`, each within 0.5..2.0 (older ffmpeg's limit per instance)."""
    stages = []
    while speed > 2.0:
        stages.append(2.0)
        speed /= 2.0
    while speed < 0.5:
        stages.append(0.5)
        speed /= 0.5
    return [*stages, speed]
