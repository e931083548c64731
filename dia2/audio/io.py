"""Reading and writing audio files: PyAV reads, `dia2.audio.encode` writes, soxr resamples.

`decode_audio_file` reads any container and codec ffmpeg's libraries decode (through PyAV: wav,
flac, aiff, mp3, ogg Opus/Vorbis, m4a/AAC, mp4/mov/webm/mkv videos' first audio stream, wma...).
It is the one reader of a user's audio: data prep, dia2-eval's references, voice prefixes, the
server's and the studio's uploads (`read_audio` is its mono shorthand). Every written format (wav, flac, mp3, Ogg Opus as `.ogg`/`.opus`, AAC, raw pcm) goes through
`dia2.audio.encode`, so a saved file and a served stream carry the same bytes. (torchaudio does not
import beside the CPU torch build these machines use; see shared/environment.md.)
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dia2.audio.encode import encode, format_for_path
from dia2.errors import Dia2Error

logger = logging.getLogger(__name__)

CLIP_LEVEL = 0.99
"""A sample at or above this magnitude counts as clipped (8-bit audio tops out at 127/128)."""
_SEEK_PREROLL_SECONDS = 0.5


class AudioFileError(Dia2Error, ValueError):
    """An audio file that cannot be read or written; the message names the file."""


class NoAudioError(AudioFileError):
    """A readable file with nothing to hear: no audio stream (a video without sound), or a stream
    without samples."""


def read_audio(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Any file `decode_audio_file` reads, as the mono mix [S] (float32) at `sample_rate`."""
    return decode_audio_file(path, sample_rate).waveform


def resample(waveform: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Mono float32 waveform [S] from `rate` to `target` Hz (soxr, high quality)."""
    if rate == target:
        return np.ascontiguousarray(waveform, dtype=np.float32)
    import soxr

    return soxr.resample(np.asarray(waveform, dtype=np.float32), rate, target).astype(np.float32)


def write_audio(path: str | os.PathLike, waveform: np.ndarray, sample_rate: int) -> Path:
    """Write mono audio [S] in the format the file's extension names (`dia2.audio.encode.EXTENSIONS`:
    .wav and .flac 16-bit, .mp3, .ogg/.opus Ogg Opus, .aac ADTS, .pcm/.raw s16le). An unknown
    extension raises `EncodeError` listing the known ones."""
    path = Path(path)
    data = encode(waveform, sample_rate, format_for_path(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@dataclass(frozen=True)
class AudioStreamInfo:
    """What a file's container says of its first audio stream. `seconds` is None when it states
    no length (a live-recorded webm, a raw ADTS stream)."""

    container: str
    codec: str
    sample_rate: int
    channels: int
    seconds: float | None


@dataclass(frozen=True)
class DecodedAudio:
    """Decoded audio: float32 samples [C, S] at `sample_rate` (C = 1 when a mono mix was asked
    for), the stream it came from, and the peak and clipped fraction of the samples as recorded
    (all channels, before resampling). `truncated`: decoding failed part way, and `samples` holds
    the audio before the damage. `nonfinite`: NaN or infinite samples (float files), read as 0."""

    samples: np.ndarray
    sample_rate: int
    stream: AudioStreamInfo
    peak: float
    clipped: float
    truncated: bool
    nonfinite: bool = False

    @property
    def seconds(self) -> float:
        return self.samples.shape[1] / self.sample_rate

    @property
    def waveform(self) -> np.ndarray:
        """The mono mix [S] (the channels' mean)."""
        return self.samples[0] if self.samples.shape[0] == 1 else self.samples.mean(axis=0)


def probe_audio_file(source: str | os.PathLike | bytes, label: str | None = None) -> AudioStreamInfo:
    """The first audio stream of a file (or its bytes) without decoding it; AudioFileError naming
    `label` (default: the path) when it is not a container ffmpeg reads or holds no audio stream."""
    with _open_container(source, label) as (container, name):
        return _stream_info(container, _audio_stream(container, name))


def decode_audio_file(
    source: str | os.PathLike | bytes,
    sample_rate: int,
    mono: bool = True,
    start: float = 0.0,
    stop: float | None = None,
    label: str | None = None,
) -> DecodedAudio:
    """Decode the first audio stream of any container PyAV reads, seconds [start, stop) of it (stop
    None: to the end), to float32 at `sample_rate` (soxr): mono [1, S], or every channel [C, S].

    Samples are laid end to end from the first decoded one (the codec's priming and padding are
    dropped as the container's edit list or header says). A span from `start` > 0 is read after a
    seek and placed by the frames' timestamps: exact where they count samples (wav, flac, mp3, m4a,
    ogg), within a millisecond where they count milliseconds (webm, mkv). AudioFileError, naming
    `label` (default: the path), when
    the file is missing, is not a container ffmpeg reads, holds no audio stream (a video says so),
    or decodes to no audio at all.
    """
    if not (isinstance(sample_rate, int) and sample_rate > 0):
        raise AudioFileError(f"sample_rate {sample_rate!r} must be a positive whole number of Hz")
    if start < 0 or (stop is not None and stop <= start):
        raise AudioFileError(f"cannot read seconds [{start}, {stop}): give 0 <= start < stop")
    with _open_container(source, label) as (container, name):
        stream = _audio_stream(container, name)
        info = _stream_info(container, stream)
        native, truncated = _decode_native(container, stream, start, stop, name)
    if native.shape[1] == 0:
        where = f" from {start:g} s" if start > 0 else ""
        raise NoAudioError(f"{name} holds no decodable audio{where} ({info.codec} in {info.container}): give a recording with sound")
    finite = np.isfinite(native)
    nonfinite = not finite.all()
    native = np.where(finite, native, 0.0).astype(np.float32)
    magnitude = np.abs(native)
    peak, clipped = float(magnitude.max()), float((magnitude >= CLIP_LEVEL).mean())
    if mono and native.shape[0] > 1:
        native = native.mean(axis=0, keepdims=True)
    samples = np.stack([resample(channel, info.sample_rate, sample_rate) for channel in native])
    return DecodedAudio(samples, sample_rate, info, peak, clipped, truncated, nonfinite)


@contextmanager
def _open_container(source: str | os.PathLike | bytes, label: str | None) -> Iterator[tuple[object, str]]:
    """A PyAV input container and the name errors give it; AudioFileError when it cannot be opened."""
    import av

    if isinstance(source, (bytes, bytearray)):
        name, target = label or "the audio", io.BytesIO(bytes(source))
    else:
        name, target = label or str(source), str(source)
        if not Path(source).is_file():
            raise AudioFileError(f"audio file {name} not found")
    try:
        container = av.open(target, mode="r")
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise AudioFileError(f"cannot read {name} as audio or video ({exc}): the file is damaged or not a media file") from exc
    with container:
        yield container, name


def _audio_stream(container, name: str):
    if not container.streams.audio:
        what = "a video without an audio stream" if container.streams.video else "a file without an audio stream"
        raise NoAudioError(f"{name} is {what}: nothing to hear; give a recording that holds sound")
    return container.streams.audio[0]


def _stream_info(container, stream) -> AudioStreamInfo:
    import av

    context = stream.codec_context
    if stream.duration is not None and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration:
        seconds = container.duration / av.time_base
    else:
        seconds = None
    return AudioStreamInfo(container.format.name.split(",")[0], context.name, int(context.sample_rate or stream.rate or 0),
                           int(context.channels or 0), seconds)


def _decode_native(container, stream, start: float, stop: float | None, name: str) -> tuple[np.ndarray, bool]:
    """Samples [C, S] of seconds [start, stop) at the stream's own rate and channels (every frame
    converted to the first frame's layout and rate), and whether decoding broke off part way."""
    import av

    origin = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    if start > 0:
        # Land a little early: a codec's first frames after a seek lack the state (AAC's overlap,
        # Opus's pre-roll, mp3's bit reservoir) that the samples at `start` need.
        target = max(0.0, start - _SEEK_PREROLL_SECONDS) + origin
        container.seek(int(target / stream.time_base), stream=stream, backward=True)
    pieces: list[np.ndarray] = []
    converter, rate, at, decoded, truncated = None, 0, None, 0, False
    try:
        for frame in container.decode(stream):
            if converter is None:
                rate = frame.sample_rate
                converter = av.AudioResampler(format="fltp", layout=frame.layout, rate=rate)
                if start > 0 and frame.time is None:
                    raise AudioFileError(f"{name} carries no timestamps to seek by: read it from the start (start=0)")
                # Where the first frame lies: 0 on a plain read, its timestamp after a seek.
                at = round((frame.time - origin) * rate) if start > 0 else 0
            for piece in converter.resample(frame):
                pieces.append(piece.to_ndarray())
                decoded += pieces[-1].shape[1]
            if stop is not None and at + decoded >= stop * rate:
                break
        if converter is not None:
            pieces += [piece.to_ndarray() for piece in converter.resample(None)]
    except AudioFileError:
        raise
    except (av.FFmpegError, ValueError) as exc:
        if not pieces:
            raise AudioFileError(f"cannot decode {name} ({exc}): the file is damaged or its codec is not supported") from exc
        truncated = True
        logger.info("%s: decoding stopped after %.2f s (%s)", name, decoded / rate, exc)
    if not pieces:
        return np.zeros((max(1, stream.codec_context.channels or 1), 0), np.float32), truncated
    samples = np.concatenate(pieces, axis=1)
    first = max(0, round(start * rate) - at)
    last = samples.shape[1] if stop is None else max(first, round(stop * rate) - at)
    return samples[:, first:last], truncated
