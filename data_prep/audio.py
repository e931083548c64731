"""Reading recordings piecewise: any container and codec `dia2.audio.io` reads, never whole.

A `Recording` reads spans through the one reader of a user's audio (`decode_audio_file`: PyAV,
so m4a voice memos, mp4/mov/webm videos' sound, mp3, ogg, flac, wav, aiff ... alike), each span
after a seek, so an hours-long file costs only the span in memory. `blocks` walks the whole file
once, in order, and learns its exact length (a container may state none, or an estimate); a file
that stops decoding part way yields the audio before the damage (noted as truncated) instead of
failing outright. Spans come back resampled (soxr) with a little extra audio read on each side,
so the resampler's edge transient falls outside the span.

Shapes: C channels, S samples.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dia2.audio.io import AudioFileError, DecodedAudio, NoAudioError, decode_audio_file, probe_audio_file

logger = logging.getLogger(__name__)

_MARGIN_SECONDS = 0.05  # extra audio read on each side of a span for the resampler
_STATED_SLACK_SECONDS = 0.5  # a compressed file's stated length may be an estimate: shorter by this is not truncation


@dataclass(frozen=True)
class AudioInfo:
    """What a recording's container says of its first audio stream: rate, channels, the length it
    states in frames (0 when it states none) and the codec."""

    sample_rate: int
    channels: int
    frames: int
    codec: str

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


@dataclass(frozen=True)
class Span:
    """A stretch of a recording: samples [C, S] at the requested rate, and the peak level and
    clipped fraction of its original samples (all channels)."""

    samples: np.ndarray
    peak: float
    clipped: float


def probe(path: Path) -> AudioInfo:
    """The first audio stream of a file; AudioFileError (NoAudioError for a video without sound)
    if it is not a container ffmpeg reads."""
    stream = probe_audio_file(path)
    if stream.sample_rate <= 0 or stream.channels <= 0:
        raise AudioFileError(f"{path} has an invalid audio stream ({stream.sample_rate} Hz, {stream.channels} channels)")
    frames = round(stream.seconds * stream.sample_rate) if stream.seconds else 0
    return AudioInfo(stream.sample_rate, stream.channels, frames, stream.codec)


class Recording:
    """An open recording read span by span. Use as a context manager.

    `frames` starts as the length the container states and becomes exact once `blocks` has read
    the file through (or a read finds it shorter: `truncated` is then True); `peak` and `clipped`
    (the share of samples at full scale, all channels as recorded) are known from then on too.
    `nonfinite`: a span held NaN or infinite samples (read as 0).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.info = probe(path)
        self.frames = self.info.frames
        self.truncated = False
        self.nonfinite = False
        self.peak = self.clipped = 0.0

    def __enter__(self) -> "Recording":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    @property
    def seconds(self) -> float:
        """Readable duration: the container's claim until the file has been read through."""
        return self.frames / self.info.sample_rate

    def _decode(self, rate: int, start: float, stop: float | None) -> DecodedAudio | None:
        """Seconds [start, stop) at `rate`, every channel; None past the end. A decode that breaks
        off part way marks the recording truncated there."""
        try:
            decoded = decode_audio_file(self.path, rate, mono=False, start=start, stop=stop)
        except NoAudioError:
            if start > 0:
                return None  # nothing from `start` on: the audio ended before it
            raise
        self.nonfinite |= decoded.nonfinite
        if decoded.truncated:
            self._truncated_at(start + decoded.seconds)
        return decoded

    def _truncated_at(self, seconds: float) -> None:
        frames = round(seconds * self.info.sample_rate)
        self.frames, self.truncated = min(self.frames, frames) if self.frames else frames, True

    def blocks(self, rate: int, block_samples: int) -> Iterator[np.ndarray]:
        """The whole recording in order, its channels' mean at `rate`: blocks [block_samples] (the
        last one shorter). Afterwards `frames` is the decoded length, and a file found well short
        of its stated length is truncated."""
        at, clipped = 0, 0.0
        while True:
            decoded = self._decode(rate, at / rate, (at + block_samples) / rate)
            if decoded is None:
                break
            block = decoded.waveform[:block_samples]
            self.peak, clipped = max(self.peak, decoded.peak), clipped + decoded.clipped * len(block)
            whole = len(block) >= block_samples - rate // 100  # a seek lands within a few ms on webm/mkv
            if whole:
                block = np.pad(block, (0, block_samples - len(block)))
            if len(block):
                yield block
            at += len(block)
            if not whole or decoded.truncated:
                break
        seconds, stated = at / rate, self.info.seconds
        self.truncated |= stated - seconds > max(_STATED_SLACK_SECONDS, 0.02 * stated)
        self.frames = round(seconds * self.info.sample_rate)
        self.clipped = clipped / at if at else 0.0

    def read_frames(self, start: int, stop: int) -> np.ndarray:
        """Original samples [C, S] of frames [start, stop), clamped to what the file holds."""
        native = self.info.sample_rate
        stop = min(stop, self.frames) if self.frames else stop
        if stop <= start:
            return np.zeros((self.info.channels, 0), np.float32)
        decoded = self._decode(native, start / native, stop / native)
        samples = decoded.samples if decoded is not None else np.zeros((self.info.channels, 0), np.float32)
        if samples.shape[1] < stop - start and self.frames:
            self._truncated_at((start + samples.shape[1]) / native)  # the file ends before it says
        return samples

    def read_span(self, start: float, stop: float, rate: int) -> Span:
        """Seconds [start, stop) at `rate`: samples [C, round((stop - start) * rate)], zero-padded
        past the end of the readable audio."""
        native = self.info.sample_rate
        # Start on a time that falls on a whole sample at both rates, so trimming the margin is exact.
        grid = math.gcd(native, rate)
        lo = math.floor(max(0.0, start - _MARGIN_SECONDS) * grid) / grid
        decoded = self._decode(rate, lo, stop + _MARGIN_SECONDS)
        length = int(round((stop - start) * rate))
        out = np.zeros((self.info.channels, length), np.float32)
        if decoded is None:
            return Span(out, 0.0, 0.0)
        offset = int(round((start - lo) * rate))
        inner = decoded.samples[:, offset : offset + length]
        out[: inner.shape[0], : inner.shape[1]] = inner
        return Span(out, decoded.peak, decoded.clipped)


def mix(samples: np.ndarray, dialogue: bool) -> np.ndarray:
    """Channels [C, S] -> mono [S].

    A dialogue has one speaker per channel, so its channels are summed (each voice at its
    recorded level, as a mixing desk would); other multi-channel audio holds one signal, so its
    channels are averaged. The sum is scaled down only if it would clip.
    """
    if samples.shape[0] == 1:
        return samples[0]
    if not dialogue:
        return samples.mean(axis=0)
    total = samples.sum(axis=0)
    peak = float(np.abs(total).max()) if total.size else 0.0
    return total / peak if peak > 1.0 else total


def db_to_level(db: float) -> float:
    """dBFS -> linear amplitude (full scale = 1)."""
    return float(10.0 ** (db / 20.0))
