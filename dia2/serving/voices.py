"""Named voices for the server: uploaded or dropped-in recordings made into prefixes once, and stored.

A voice here is what a request names in `voice`: a prefix (`dia2.generation.voice.Voice`: a
recording's Mimi codes and its timed words), a LoRA adapter (a PEFT folder or Hub repo id that
the engine loads by name), or both, and optionally a fixed seed. The eleven OpenAI voice names
are builtin aliases: no prefix and a fixed seed each (so "alloy" sounds the same on every
request), unless the store is told to map them to stored voices.

Folder layout:

    <folder>/<name>/meta.json          adapter, seed (null, or an integer that fixes the voice's seed),
                                       speakers, transcript (null: the prefix's words), created
    <folder>/<name>/voice.json         the prefix's timed words (Voice.save), when it has a prefix
    <folder>/<name>/codes.npy          the prefix's Mimi codes [K, P]
    <folder>/<name>/speaker_1.<ext>    the recording(s) as received (speaker_2.<ext> for a dialogue)
    <folder>/<stem>.wav (.mp3 ...)     dropped in by hand: made into <folder>/<stem>/ by `scan`
    <folder>/<stem>.txt                its transcript (moved to <folder>/<stem>/transcript.txt)
    <folder>/.new-* .old-* .del-*      work in progress: a voice folder is written whole under a
                                       dot name, then renamed, so a failure or a crash never
                                       leaves half a voice (restarts tidy these up)

Each recording is transcribed once, when it is added: the stored Voice is what every request
and every restart uses. Transcription takes seconds, and Whisper can hear a word differently on
another machine or version, so re-transcribing on load would be slow and could change how a
stored voice sounds.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import shutil
import threading
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from dia2.audio.io import resample
from dia2.errors import Dia2Error
from dia2.generation.voice import PrefixError, Voice

logger = logging.getLogger(__name__)

OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse")
"""The voice names of OpenAI's speech API: builtin aliases, so OpenAI clients work unchanged."""
AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".ogg", ".opus", ".m4a")
"""Files dropped into the folder with these extensions become voices on `scan`."""
MIN_SECONDS, MAX_SECONDS = 1.0, 30.0
"""Length bounds of each speaker's recording (data prep's utterance bounds)."""
SILENCE_DB = -50.0
"""A recording whose peak stays below this level (dBFS) is silent (data prep's --silence-db)."""
CLIP_LEVEL = 0.99
"""A sample at or above this magnitude counts as clipped (8-bit audio tops out at 127/128)."""
MAX_CLIPPED = 0.001
"""Most samples (fraction) at full scale before a recording counts as clipped (data prep's --max-clipped)."""
META = "meta.json"
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}", re.ASCII)
_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+", re.ASCII)
# Container formats (PyAV's first name for them) whose usual extension differs from the name.
_SUFFIX_OF_FORMAT = {"mov": "m4a", "matroska": "webm", "mp3": "mp3", "ogg": "ogg", "wav": "wav", "flac": "flac"}


class VoiceError(Dia2Error, ValueError):
    """A bad upload or voice name; the message names the input and the fix."""

    status = 400


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
class StoredVoice:
    """One named voice. speakers: 1 or 2 recordings in the prefix (0 without a prefix);
    transcript: the one given when it was added, else the prefix's words ("" without a prefix);
    builtin: an OpenAI alias, not stored in the folder."""

    name: str
    voice: Voice | None
    adapter: str | None
    seed: int | None
    speakers: int
    transcript: str
    builtin: bool = False


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


def check_name(name: str) -> str:
    """A voice name as given, or VoiceError saying which rule it breaks."""
    rules = "1-64 letters, digits, '-', '_' or '.', not starting with '.'"
    if not isinstance(name, str) or not name:
        raise VoiceError(f"voice name {name!r} is empty: give {rules}")
    if "/" in name or "\\" in name or ".." in name:
        raise VoiceError(f"voice name {name!r} holds a path ('/', '\\' or '..'): give {rules}")
    if name.startswith("."):
        raise VoiceError(f"voice name {name!r} starts with '.': give {rules}")
    if len(name) > 64:
        raise VoiceError(f"voice name {name[:20]!r}... is {len(name)} characters long: give {rules}")
    if not _NAME.fullmatch(name):
        raise VoiceError(f"voice name {name!r} holds other characters: give {rules}")
    return name


def decode_audio(data: bytes, sample_rate: int, label: str, max_seconds: float = MAX_SECONDS) -> DecodedAudio:
    """Any audio ffmpeg reads (bytes) -> DecodedAudio; VoiceError naming `label` if it is not audio.

    Decoding stops a second past `max_seconds` (a small compressed file can hold hours); `seconds`
    is then the container's stated length, or what was decoded when it states none.
    """
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            fmt = container.format.name.split(",")[0]
            frames, stated = _decode_frames(container, max_seconds + 1.0)
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise VoiceError(f"{label} cannot be decoded as audio ({exc}): send a wav, mp3, flac, ogg or m4a recording") from exc
    if not frames:
        raise VoiceError(f"{label} holds no audio: send a wav, mp3, flac, ogg or m4a recording")
    rate = frames[0].sample_rate
    samples = np.concatenate([f.to_ndarray() for f in frames], axis=1)  # [C, S]
    samples = np.where(np.isfinite(samples), samples, 0.0).astype(np.float32)
    magnitude = np.abs(samples)
    seconds = samples.shape[1] / rate
    if seconds > max_seconds and stated is not None:
        seconds = max(seconds, stated)
    suffix = _SUFFIX_OF_FORMAT.get(fmt, fmt if re.fullmatch(r"[a-z0-9]{1,8}", fmt) else "audio")
    return DecodedAudio(
        resample(samples.mean(axis=0), rate, sample_rate), seconds,
        float(magnitude.max(initial=0.0)), float((magnitude >= CLIP_LEVEL).mean()) if magnitude.size else 0.0, suffix,
    )


def _decode_frames(container, limit: float) -> tuple[list, float | None]:
    """The first audio stream's frames as planar float at their own rate and channels (levels are
    measured on the samples as recorded), up to about `limit` seconds; and the stated length."""
    import av

    if not container.streams.audio:
        return [], None
    stream = container.streams.audio[0]
    stated = container.duration / av.time_base if container.duration else None
    to_float = av.AudioResampler(format="fltp")
    frames, seconds = [], 0.0
    for frame in container.decode(stream):
        frames += to_float.resample(frame)
        seconds += frame.samples / frame.sample_rate
        if seconds > limit:
            return frames, stated
    return frames + to_float.resample(None), stated


def check_speech(audio: DecodedAudio, label: str) -> None:
    """VoiceError unless the recording could hold a voice: MIN_SECONDS to MAX_SECONDS long, not
    silent, not clipped. (Whether it holds words is make_voice's to find.)"""
    if not MIN_SECONDS <= audio.seconds <= MAX_SECONDS:
        raise VoiceError(
            f"{label} is {audio.seconds:.2f} s long; a voice recording must be {MIN_SECONDS:g} to {MAX_SECONDS:g} s: "
            "send a clip of the speaker talking within those bounds"
        )
    if audio.peak < 10.0 ** (SILENCE_DB / 20.0):
        level = 20 * math.log10(audio.peak) if audio.peak > 0 else float("-inf")
        raise VoiceError(f"{label} is silent (peak {level:.1f} dBFS, below {SILENCE_DB:g} dBFS): send a recording of speech")
    if audio.clipped > MAX_CLIPPED:
        raise VoiceError(
            f"{label} is clipped ({audio.clipped:.2%} of samples at full scale, more than {MAX_CLIPPED:.1%}): "
            "record it again at a lower level"
        )


def check_adapter(adapter: str, local: bool = True) -> str:
    """An adapter reference to store: an existing PEFT folder (as an absolute path; only with
    `local`) or a Hub repo id. Without `local` the disk is never looked at (a client's input)."""
    text = str(adapter).strip()
    path = Path(text).expanduser()
    if local and text and path.exists():
        from dia2.model.adapters import AdapterError, resolve_adapter

        try:
            resolve_adapter(path)  # a local folder: checks its two files, no download
        except AdapterError as exc:
            raise VoiceError(str(exc)) from exc
        return str(path.resolve())
    if not _REPO_ID.fullmatch(text):
        raise VoiceError(
            f"adapter {adapter!r} is neither an existing folder nor a Hub repo id like 'user/my-voice-lora': check the path"
        )
    return text


def builtin_voice(name: str) -> StoredVoice:
    """An OpenAI alias with no prefix: its seed is a stable hash of its name."""
    return StoredVoice(name, None, None, zlib.crc32(name.encode()), 0, "", builtin=True)


class VoiceStore:
    """The voices in `folder` plus the OpenAI aliases; safe to call from several threads.

    make_voice(speaker_1, speaker_2=None, transcript=None) -> Voice gets float32 mono arrays [S]
    at `sample_rate` (the server passes a closure over `Dia2.make_voice`). aliases: OpenAI name ->
    stored voice name played instead (an alias mapped to its own name lets a stored voice take
    that name). Recordings larger than `max_upload_bytes` are refused unread.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        make_voice: Callable[..., Voice],
        *,
        sample_rate: int = 24000,
        max_upload_bytes: int = 20 * 2**20,
        aliases: dict[str, str] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.sample_rate, self.max_upload_bytes = sample_rate, max_upload_bytes
        self._make_voice = make_voice
        self._aliases = dict(aliases or {})
        unknown = sorted(set(self._aliases) - set(OPENAI_VOICES))
        if unknown:
            raise VoiceError(f"aliases name {', '.join(unknown)}, not OpenAI voices: map only {', '.join(OPENAI_VOICES)}")
        self._lock = threading.RLock()  # guards _voices and the folder's renames
        self._work_lock = threading.Lock()  # one make_voice at a time: it shares one transcriber and codec
        self._scan_lock = threading.Lock()
        self._voices: dict[str, StoredVoice] = {}
        self._failed: dict[Path, tuple[int, int]] = {}  # dropped files that failed, as (size, mtime) then
        self.folder.mkdir(parents=True, exist_ok=True)
        self._tidy()
        self._load_all()
        self.scan()
        for alias, target in sorted(self._aliases.items()):
            if target not in self._voices:
                raise VoiceError(
                    f"aliases map '{alias}' to '{target}', which is not a stored voice in {self.folder} "
                    f"(stored: {', '.join(sorted(self._voices)) or 'none'}): add that voice or fix the mapping"
                )

    # --- reading -------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """The stored voices (sorted), then the OpenAI aliases."""
        with self._lock:
            stored = sorted(self._voices)
        return stored + [a for a in OPENAI_VOICES if a not in stored]

    def list(self) -> list[StoredVoice]:
        """Each record once: the stored voices (sorted), then the builtin aliases (mapped aliases
        are names of stored voices' records: see `names` and `get`)."""
        with self._lock:
            stored = [self._voices[n] for n in sorted(self._voices)]
        return stored + [builtin_voice(a) for a in OPENAI_VOICES if a not in self._aliases]

    def get(self, name: str) -> StoredVoice:
        """The voice called `name` (a mapped alias gives its stored voice's record); VoiceNotFound otherwise."""
        with self._lock:
            if name in self._voices:
                return self._voices[name]
            if name in self._aliases:
                return self._voices[self._aliases[name]]
        if name in OPENAI_VOICES:
            return builtin_voice(name)
        raise VoiceNotFound(f"no voice named {name!r}: use one of {', '.join(self.names())}")

    # --- adding and deleting -------------------------------------------------------------------

    def add(
        self,
        name: str,
        speaker_1: bytes,
        speaker_2: bytes | None = None,
        transcript: str | None = None,
        adapter: str | None = None,
        replace: bool = False,
        local_adapter: bool = True,
    ) -> StoredVoice:
        """Decode, check and transcribe one or two recordings (any format ffmpeg reads) into a
        stored voice; nothing is written unless all of it succeeds. `local_adapter=False` takes
        Hub repo ids only (a client's input never names the server's disk)."""
        self._check_free(name, replace)
        adapter = check_adapter(adapter, local_adapter) if adapter is not None else None
        uploads = {"speaker_1": speaker_1, **({"speaker_2": speaker_2} if speaker_2 is not None else {})}
        for label, data in uploads.items():
            if len(data) > self.max_upload_bytes:
                raise UploadTooLarge(
                    f"{label} is {len(data) / 2**20:.1f} MiB, over the {self.max_upload_bytes / 2**20:g} MiB limit: "
                    f"send a shorter clip (at most {MAX_SECONDS:g} s is used) or a compressed format"
                )
        audio = {label: decode_audio(data, self.sample_rate, label) for label, data in uploads.items()}
        files = {f"{label}.{audio[label].suffix}": data for label, data in uploads.items()}
        return self._add(name, audio, files, transcript, adapter, replace)

    def add_adapter(self, name: str, adapter: str, replace: bool = False, local_adapter: bool = True) -> StoredVoice:
        """A voice that is only a LoRA adapter (a PEFT folder or Hub repo id): no prefix."""
        self._check_free(name, replace)
        return self._commit(name, _meta(check_adapter(adapter, local_adapter), 0, None), None, {}, replace)

    def delete(self, name: str) -> None:
        """Remove a stored voice and its folder. Builtin aliases and voices an alias plays cannot be deleted."""
        with self._lock:
            if name not in self._voices:
                if name in OPENAI_VOICES:
                    raise VoiceError(f"'{name}' is a builtin OpenAI voice alias: it cannot be deleted")
                raise VoiceNotFound(f"no voice named {name!r}: use one of {', '.join(self.names())}")
            users = sorted(a for a, t in self._aliases.items() if t == name)
            if users:
                raise VoiceError(f"voice '{name}' is what alias {', '.join(users)} plays: remove it from aliases first")
            trash = self._work_folder("del", name)
            (self.folder / name).rename(trash)
            del self._voices[name]
        shutil.rmtree(trash, ignore_errors=True)

    def scan(self) -> list[str]:
        """Make each audio file dropped into the folder (<stem>.wav ...) into voice <stem>, moving it
        (and <stem>.txt, its transcript) into the voice's folder; returns the new names. A file
        that fails is left in place, logged with the reason, and not tried again until it changes."""
        added = []
        with self._scan_lock:
            for path in sorted(self.folder.iterdir()):
                if path.name.startswith(".") or path.suffix.lower() not in AUDIO_SUFFIXES or not path.is_file():
                    continue
                stat = path.stat()
                if self._failed.get(path) == (stat.st_size, stat.st_mtime_ns):
                    continue
                try:
                    self._adopt(path)
                except VoiceError as exc:
                    self._failed[path] = (stat.st_size, stat.st_mtime_ns)
                    logger.warning("voice file %s left in place, not made a voice: %s", path, exc)
                else:
                    added.append(path.stem)
        return added

    # --- internals -----------------------------------------------------------------------------

    def _check_free(self, name: str, replace: bool) -> None:
        check_name(name)
        if name in OPENAI_VOICES and self._aliases.get(name) != name:
            raise VoiceError(
                f"'{name}' is a builtin OpenAI voice alias: choose another name (or start the store with "
                f"aliases {{'{name}': '{name}'}} to play a stored voice of that name)"
            )
        with self._lock:
            if not replace and (self.folder / name).exists():
                raise VoiceExists(f"a voice named '{name}' exists already: pass replace=true to overwrite it")

    def _add(
        self, name: str, audio: dict[str, DecodedAudio], files: dict[str, bytes], transcript: str | None,
        adapter: str | None, replace: bool,
    ) -> StoredVoice:
        """Checks, make_voice, then the commit: shared by uploads and dropped-in files."""
        for label, decoded in audio.items():
            check_speech(decoded, label)
        transcript = (transcript or "").strip() or None
        waves = [a.waveform for a in audio.values()]
        with self._work_lock:
            try:
                voice = self._make_voice(waves[0], waves[1] if len(waves) > 1 else None, transcript=transcript)
            except PrefixError as exc:
                raise VoiceError(f"voice '{name}': {exc}") from exc
        if not voice.words:
            raise VoiceError(f"voice '{name}': no words were heard in the recording; send a clip of the speaker talking")
        return self._commit(name, _meta(adapter, len(waves), transcript), voice, files, replace)

    def _adopt(self, path: Path) -> None:
        """Make the dropped-in file `path` into a voice (see `scan`)."""
        name = path.stem
        try:
            self._check_free(name, replace=False)
        except VoiceExists as exc:
            raise VoiceError(f"a voice named '{name}' exists already: rename {path.name} or delete that voice") from exc
        text_file = path.with_suffix(".txt")
        try:
            transcript = text_file.read_text(encoding="utf-8") if text_file.is_file() else None
            data = path.read_bytes()
        except (OSError, UnicodeDecodeError) as exc:
            raise VoiceError(f"cannot read {path.name} or its transcript {text_file.name}: {exc}") from exc
        audio = {"speaker_1": decode_audio(data, self.sample_rate, path.name)}
        files = {f"speaker_1{path.suffix.lower()}": data}
        if transcript is not None:
            files["transcript.txt"] = transcript.encode("utf-8")
        self._add(name, audio, files, transcript, None, replace=False)
        path.unlink()
        if transcript is not None:
            text_file.unlink()

    def _commit(self, name: str, meta: dict, voice: Voice | None, files: dict[str, bytes], replace: bool) -> StoredVoice:
        """Write the voice's folder under a dot name, then swap it in (the old one stays until then)."""
        stage = self._work_folder("new", name)
        old = None
        try:
            stage.mkdir()
            if voice is not None:
                voice.save(stage)
            for file_name, data in files.items():
                (stage / file_name).write_bytes(data)
            (stage / META).write_text(json.dumps(meta, indent=1) + "\n")
            record = _record(name, meta, voice)
            with self._lock:
                # Again under the lock: another thread may have added the name since the first check.
                self._check_free(name, replace)
                target = self.folder / name
                if target.exists():
                    old = self._work_folder("old", name)
                    target.rename(old)
                try:
                    stage.rename(target)
                except OSError:
                    if old is not None:
                        old.rename(target)
                    raise
                self._voices[name] = record
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("voice '%s' stored in %s", name, self.folder / name)
        return record

    def _work_folder(self, kind: str, name: str) -> Path:
        return self.folder / f".{kind}-{name}-{uuid.uuid4().hex[:8]}"

    def _tidy(self) -> None:
        """After a crash: drop half-written and deleted voices, put back a replaced one that was not yet swapped."""
        for path in sorted(self.folder.glob(".*-*-*")):
            kind, _, rest = path.name[1:].partition("-")
            name = rest.rpartition("-")[0]
            if kind == "old" and not (self.folder / name).exists():
                path.rename(self.folder / name)
            elif kind in ("new", "old", "del"):
                shutil.rmtree(path, ignore_errors=True)

    def _load_all(self) -> None:
        for path in sorted(p for p in self.folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                meta = json.loads((path / META).read_text())
                voice = Voice.load(path) if (path / "voice.json").exists() else None
                self._voices[check_name(path.name)] = _record(path.name, meta, voice)
            except (OSError, ValueError, KeyError, TypeError) as exc:  # PrefixError and VoiceError are ValueErrors
                logger.warning("%s is not a stored voice, left out: %s", path, exc)


def _meta(adapter: str | None, speakers: int, transcript: str | None) -> dict:
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {"adapter": adapter, "seed": None, "speakers": speakers, "transcript": transcript, "created": created}


def _record(name: str, meta: dict, voice: Voice | None) -> StoredVoice:
    seed = meta.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise TypeError(f"{META} seed must be an integer or null, got {seed!r}")
    transcript = meta.get("transcript") or (" ".join(w.text for w in voice.words) if voice is not None else "")
    return StoredVoice(name, voice, meta.get("adapter"), seed, int(meta["speakers"]), transcript)
