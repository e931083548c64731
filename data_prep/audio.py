"""Reading recordings piecewise: any format and sample width soundfile decodes, never whole.

A `Recording` seeks and reads spans in blocks, so an hours-long file costs only the span in
memory, and a truncated or partly corrupt file yields the audio before the damage (the reader
notes it as truncated) instead of failing outright. Spans come back resampled (soxr, through
`dia2.audio.io.resample`) with a little extra audio on each side, so the resampler's edge
transient falls outside the span.

Shapes: C channels, S samples.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dia2.audio.io import CLIP_LEVEL, AudioFileError, resample

logger = logging.getLogger(__name__)

_BLOCK_SECONDS = 1.0  # a decode error loses at most this much good audio before it
_MARGIN_SECONDS = 0.05  # extra audio read on each side of a span for the resampler


@dataclass(frozen=True)
class AudioInfo:
    """What a recording's header says."""

    sample_rate: int
    channels: int
    frames: int
    subtype: str

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
    """The header of an audio file; AudioFileError if it is not audio soundfile can read."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, OSError) as exc:
        raise AudioFileError(f"cannot read {path} as audio ({exc})") from exc
    if info.samplerate <= 0 or info.channels <= 0:
        raise AudioFileError(f"{path} has an invalid header ({info.samplerate} Hz, {info.channels} channels)")
    return AudioInfo(int(info.samplerate), int(info.channels), max(0, int(info.frames)), str(info.subtype))


class Recording:
    """An open recording read span by span. Use as a context manager.

    `frames` starts as the header's count and shrinks when the file turns out shorter (truncated
    or undecodable past some point); `truncated` is then True.
    """

    def __init__(self, path: Path) -> None:
        import soundfile as sf

        self.path = path
        self.info = probe(path)
        try:
            self._file = sf.SoundFile(str(path))
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise AudioFileError(f"cannot open {path} ({exc})") from exc
        self.frames = self.info.frames
        self.truncated = False
        self.nonfinite = False  # float files can hold NaN or inf samples; they are read as 0

    def __enter__(self) -> "Recording":
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    @property
    def seconds(self) -> float:
        """Readable duration: the header's, or less once the file proved shorter."""
        return self.frames / self.info.sample_rate

    def read_frames(self, start: int, stop: int) -> np.ndarray:
        """Original samples [C, S] of frames [start, stop), clamped to what the file holds."""
        import soundfile as sf

        stop = min(stop, self.frames)
        channels = self.info.channels
        if stop <= start:
            return np.zeros((channels, 0), np.float32)
        block = max(1, int(_BLOCK_SECONDS * self.info.sample_rate))
        pieces, at = [], start
        try:
            self._file.seek(start)
            while at < stop:
                piece = self._file.read(min(block, stop - at), dtype="float32", always_2d=True)
                pieces.append(piece)
                at += len(piece)
                if len(piece) == 0:
                    break
        except (sf.LibsndfileError, RuntimeError) as exc:
            logger.info("%s: decoding stopped at %.2f s (%s)", self.path, at / self.info.sample_rate, exc)
        if at < stop:
            # The file ends (or stops decoding) before its header says: keep what came before.
            self.frames, self.truncated = at, True
        data = np.concatenate(pieces) if pieces else np.zeros((0, channels), np.float32)
        if not np.isfinite(data).all():
            self.nonfinite = True
            data = np.where(np.isfinite(data), data, 0.0).astype(np.float32)
        return np.ascontiguousarray(data.T)

    def read_span(self, start: float, stop: float, rate: int) -> Span:
        """Seconds [start, stop) at `rate`: samples [C, round((stop - start) * rate)], zero-padded
        past the end of the readable audio."""
        native = self.info.sample_rate
        first, last = int(math.floor(start * native)), int(math.ceil(stop * native))
        margin = int(_MARGIN_SECONDS * native)
        # Start on a frame that falls on a whole output sample, so trimming the margin is exact.
        grid = native // math.gcd(native, rate)
        lo = max(0, first - margin) // grid * grid
        raw = self.read_frames(lo, last + margin)
        inner = raw[:, first - lo : last - lo]
        peak = float(np.abs(inner).max()) if inner.size else 0.0
        clipped = float((np.abs(inner) >= CLIP_LEVEL).mean()) if inner.size else 0.0
        length = int(round((stop - start) * rate))
        offset = int(round(start * rate)) - lo * rate // native
        out = np.zeros((raw.shape[0], length), np.float32)
        for c in range(raw.shape[0]):
            channel = resample(raw[c], native, rate)[offset : offset + length]
            out[c, : len(channel)] = channel
        return Span(out, peak, clipped)


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
