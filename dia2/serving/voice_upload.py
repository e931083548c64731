"""What a voice upload must be: a valid name, recordings that decode and could hold a voice,
an adapter reference that names a PEFT folder or a Hub repo; and the errors a bad one gets
(each a `Dia2Error` with an HTTP status, naming the input and the fix)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dia2.audio.io import AudioFileError, NoAudioError, decode_audio_file
from dia2.generation.voice import VoiceError
from dia2.model.assets import hub_repo_id_problem

MIN_SECONDS, MAX_SECONDS = 1.0, 30.0
"""Length bounds of each speaker's recording (data prep's utterance bounds)."""
SILENCE_DB = -50.0
"""A recording whose peak stays below this level (dBFS) is silent (data prep's --silence-db)."""
MAX_CLIPPED = 0.001
"""Most samples (fraction) at full scale before a recording counts as clipped (data prep's --max-clipped)."""
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}", re.ASCII)
# Container formats (PyAV's first name for them) whose usual extension differs from the name.
_SUFFIX_OF_FORMAT = {"mov": "m4a", "matroska": "webm", "mp3": "mp3", "ogg": "ogg", "wav": "wav", "flac": "flac"}


class VoiceNotFound(VoiceError):
    """No voice by that name; the message lists the valid names."""

    status = 404


class VoiceExists(VoiceError):
    """A voice by that name is stored already and replacing it was not asked for."""

    status = 409


class UploadTooLarge(VoiceError):
    """An uploaded recording larger than the store accepts."""

    status = 413


@dataclass(frozen=True)
class DecodedAudio:
    """An uploaded recording: mono float32 waveform [S] at the store's rate, its length, its
    peak level and clipped fraction (of the original samples, all channels), and the extension
    its container format usually has."""

    waveform: np.ndarray
    seconds: float
    peak: float
    clipped: float
    suffix: str


def check_name(name: str, what: str = "voice") -> str:
    """A voice name as given, or VoiceError saying which rule it breaks. what: the thing named, in
    the message (the studio names corpora and adapters by the same rules)."""
    rules = "1-64 letters, digits, '-', '_' or '.', not starting with '.'"
    if not isinstance(name, str) or not name:
        raise VoiceError(f"{what} name {name!r} is empty: give {rules}", param="name")
    if "/" in name or "\\" in name or ".." in name:
        raise VoiceError(f"{what} name {name!r} holds a path ('/', '\\' or '..'): give {rules}", param="name")
    if name.startswith("."):
        raise VoiceError(f"{what} name {name!r} starts with '.': give {rules}", param="name")
    if len(name) > 64:
        raise VoiceError(f"{what} name {name[:20]!r}... is {len(name)} characters long: give {rules}", param="name")
    if not _NAME.fullmatch(name):
        raise VoiceError(f"{what} name {name!r} holds other characters: give {rules}", param="name")
    return name


def decode_audio(data: bytes, sample_rate: int, label: str, max_seconds: float = MAX_SECONDS) -> DecodedAudio:
    """Any audio ffmpeg reads (bytes; `dia2.audio.io.decode_audio_file`, the one reader of a
    user's audio) -> DecodedAudio; VoiceError naming `label` if it is not audio.

    Decoding stops a second past `max_seconds` (a small compressed file can hold hours); `seconds`
    is then the container's stated length, or what was decoded when it states none.
    """
    try:
        decoded = decode_audio_file(data, sample_rate, stop=max_seconds + 1.0, label=label)
    except NoAudioError as exc:
        raise VoiceError(f"{label} holds no audio ({exc}): send a wav, mp3, flac, ogg or m4a recording", param=label) from exc
    except AudioFileError as exc:
        raise VoiceError(f"{label} cannot be decoded as audio ({exc}): send a wav, mp3, flac, ogg or m4a recording",
                         param=label) from exc
    seconds, stated = decoded.seconds, decoded.stream.seconds
    if seconds > max_seconds and stated is not None:
        seconds = max(seconds, stated)
    fmt = decoded.stream.container
    suffix = _SUFFIX_OF_FORMAT.get(fmt, fmt if re.fullmatch(r"[a-z0-9]{1,8}", fmt) else "audio")
    return DecodedAudio(decoded.waveform, seconds, decoded.peak, decoded.clipped, suffix)


def check_speech(audio: DecodedAudio, label: str) -> None:
    """VoiceError unless the recording could hold a voice: MIN_SECONDS to MAX_SECONDS long, not
    silent, not clipped. (Whether it holds words is make_prefix's to find.)"""
    if not MIN_SECONDS <= audio.seconds <= MAX_SECONDS:
        raise VoiceError(
            f"{label} is {audio.seconds:.2f} s long; a voice recording must be {MIN_SECONDS:g} to {MAX_SECONDS:g} s: "
            "send a clip of the speaker talking within those bounds",
            param=label,
        )
    if audio.peak < 10.0 ** (SILENCE_DB / 20.0):
        level = 20 * math.log10(audio.peak) if audio.peak > 0 else float("-inf")
        raise VoiceError(f"{label} is silent (peak {level:.1f} dBFS, below {SILENCE_DB:g} dBFS): send a recording of speech",
                         param=label)
    if audio.clipped > MAX_CLIPPED:
        raise VoiceError(
            f"{label} is clipped ({audio.clipped:.2%} of samples at full scale, more than {MAX_CLIPPED:.1%}): "
            "record it again at a lower level",
            param=label,
        )


def check_adapter(adapter: str, local: bool = True) -> str:
    """An adapter reference to store: an existing PEFT folder (as an absolute path; only with
    `local`) or a Hub repo id. Without `local` the disk is never looked at (a client's input)."""
    text = str(adapter).strip()
    path = Path(text).expanduser()
    if local and text and path.exists():
        from dia2.model.adapter_files import AdapterError, resolve_adapter

        try:
            resolve_adapter(path)  # a local folder: checks its two files, no download
        except AdapterError as exc:
            raise VoiceError(str(exc), param="adapter") from exc
        return str(path.resolve())
    if hub_repo_id_problem(text) is not None:
        raise VoiceError(
            f"adapter {adapter!r} is neither an existing folder nor a Hub repo id like 'user/my-voice-lora': check the path",
            param="adapter",
        )
    return text
