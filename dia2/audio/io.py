"""Reading and writing audio files: soundfile reads, `dia2.audio.encode` writes, soxr resamples.

Every written format (wav, flac, mp3, Ogg Opus as `.ogg`/`.opus`, AAC, raw pcm) goes through
`dia2.audio.encode`, so a saved file and a served stream carry the same bytes. (torchaudio does not
import beside the CPU torch build these machines use; see shared/environment.md.)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dia2.audio.encode import encode, format_for_path
from dia2.errors import Dia2Error


class AudioFileError(Dia2Error, ValueError):
    """An audio file that cannot be read or written; the message names the file."""


def read_audio(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Read any file soundfile can decode as mono float32 at `sample_rate`: [S]."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioFileError(f"audio file {path} not found")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioFileError(f"cannot read {path} as audio ({exc}); give a wav/flac/ogg/mp3 file") from exc
    if data.shape[0] == 0:
        raise AudioFileError(f"{path} holds no audio samples")
    return resample(data.mean(axis=1), rate, sample_rate)


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
