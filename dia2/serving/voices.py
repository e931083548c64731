"""Named voices for the server: uploaded or dropped-in recordings made into prefixes once, and stored.

A voice here is what a request names in `voice`: a `dia2.generation.voice.Voice` stored in its
own folder under its name: a prefix (a recording's Mimi codes and its timed words), a LoRA
adapter (a PEFT folder or Hub repo id that the engine loads by name), or both, and optionally
sampling defaults (`VoiceDefaults`: a seed, CFG, temperature, top-k). OpenAI's voice names are
builtin voices: no prefix and a fixed seed each (so "alloy" sounds the same on every request),
unless the store is told to map them to stored voices; they are reserved names otherwise.

Folder layout:

    <folder>/<name>/                   one voice folder (`dia2.generation.voice`: voice.json, codes.npy),
                                       with the recording(s) as received: speaker_1.<ext> (speaker_2.<ext>
                                       for a dialogue, transcript.txt for a dropped-in file's transcript).
                                       Any voice folder copied in is served too, e.g. a finished training
                                       run's adapter folder, and so are the layouts written before the
                                       one format (meta.json); a voice changed here is written in the one format
    <folder>/<stem>.wav (.mp3 ...)     dropped in by hand: made into <folder>/<stem>/ by `scan` (at start,
                                       and every few seconds while `start_scanning` runs)
    <folder>/<stem>.txt                its transcript (moved to <folder>/<stem>/transcript.txt)
    <folder>/.new-* .old-* .del-*      work in progress: a voice folder is written whole under a
                                       dot name, then renamed, so a failure or a crash never
                                       leaves half a voice (`voice_folder` tidies these up)
    <folder>/.lock                     on a network filesystem: what writers lock (`voice_folder`)

Several server processes may share the folder (`voice_folder` says how it stays consistent):
each read of the store first checks the folder (a listing and a stat per voice) and reloads the
voices another process added, replaced or deleted, so every replica serves the same voices.

Each recording is transcribed once, when it is added: the stored prefix is what every request
and every restart uses. Transcription takes seconds, and Whisper can hear a word differently on
another machine or version, so re-transcribing on load would be slow and could change how a
stored voice sounds.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dia2.audio.recordings import is_audio_file
from dia2.generation.prefix import PrefixError, VoicePrefix
from dia2.generation.voice import (
    LEGACY_META,
    VOICE_FILE,
    Voice,
    VoiceDefaults,
    created_now,
    read_voice,
    voice_record,
    write_voice,
)
from dia2.model.config import SAMPLE_RATE
from dia2.serving.voice_folder import Stamp, VoiceFolder
from dia2.serving.voice_upload import (  # noqa: F401 - the errors and checks are this module's API too
    MAX_SECONDS,
    MIN_SECONDS,
    DecodedAudio,
    UploadTooLarge,
    VoiceError,
    VoiceExists,
    VoiceNotFound,
    check_adapter,
    check_name,
    check_speech,
    decode_audio,
)

logger = logging.getLogger(__name__)

OPENAI_VOICES = (
    "alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse", "marin", "cedar",
)
"""The voice names of OpenAI's speech API (openai 3.63's list): builtin aliases, so OpenAI clients
work unchanged."""
SCAN_SECONDS = 2.0
"""How often `start_scanning` looks for dropped-in files; one is taken once it has not changed for
as long (a file still being copied in is left for a later look)."""


@dataclass(frozen=True)
class StoredVoice:
    """A voice under its name. builtin: an OpenAI alias, not stored in the folder; revision:
    changes whenever the stored voice is replaced or its defaults change (by any process sharing
    the folder). The properties are the voice's."""

    name: str
    voice: Voice
    builtin: bool = False
    revision: str = ""

    @property
    def prefix(self) -> VoicePrefix | None:
        return self.voice.prefix

    @property
    def adapter(self) -> str | None:
        return self.voice.adapter

    @property
    def defaults(self) -> VoiceDefaults:
        """Its sampling settings (a request's own win)."""
        return self.voice.defaults

    @property
    def seed(self) -> int | None:
        """The voice's fixed seed, if it has one."""
        return self.voice.defaults.seed

    @property
    def speakers(self) -> int:
        """1 or 2 recordings in the prefix (0 without a prefix)."""
        return self.voice.speakers

    @property
    def transcript(self) -> str:
        """The transcript given when it was added, else the prefix's words ("" without a prefix)."""
        return self.voice.text


def builtin_voice(name: str) -> StoredVoice:
    """An OpenAI alias with no prefix: its seed is a stable hash of its name."""
    return StoredVoice(name, Voice(defaults=VoiceDefaults(seed=zlib.crc32(name.encode()))), builtin=True)


class VoiceStore:
    """The voices in `folder` plus the OpenAI aliases; safe to call from several threads, and from
    several processes sharing the folder (each read first picks up what the others changed).

    make_prefix(speaker_1, speaker_2=None, transcript=None) -> VoicePrefix gets float32 mono arrays
    [S] at `sample_rate` (the server passes a closure over `Dia2.make_prefix`). aliases: OpenAI name ->
    stored voice name played instead (an alias mapped to its own name lets a stored voice take
    that name). Recordings larger than `max_upload_bytes` are refused unread.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        make_prefix: Callable[..., VoicePrefix],
        *,
        sample_rate: int = SAMPLE_RATE,
        max_upload_bytes: int = 20 * 2**20,
        aliases: dict[str, str] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.sample_rate, self.max_upload_bytes = sample_rate, max_upload_bytes
        self._make_prefix = make_prefix
        self._aliases = dict(aliases or {})
        unknown = sorted(set(self._aliases) - set(OPENAI_VOICES))
        if unknown:
            raise VoiceError(f"aliases name {', '.join(unknown)}, not OpenAI voices: map only {', '.join(OPENAI_VOICES)}")
        # _voices and _stamps are replaced whole, never changed in place: a reader's copy stays whole.
        self._lock = threading.Lock()
        self._work_lock = threading.Lock()  # one make_prefix at a time: it shares one transcriber and codec
        self._scan_lock = threading.Lock()
        self._refresh_lock = threading.Lock()  # one reload at a time
        self._voices: dict[str, StoredVoice] = {}
        self._stamps: dict[str, Stamp] = {}  # every voice folder seen, loadable or not
        self._settled: Stamp | None = None  # the folder's stamp when it was last listed, if settled then
        self._listeners: list[Callable[[str, StoredVoice | None], None]] = []
        self._failed: dict[Path, tuple[int, int]] = {}  # dropped files that failed, as (size, mtime) then
        self._scanning: threading.Event | None = None  # set to stop the scanning thread
        self._disk = VoiceFolder(self.folder)
        self._disk.tidy()
        self.refresh()
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
        stored = sorted(self._current())
        return stored + [a for a in OPENAI_VOICES if a not in stored]

    def list(self) -> list[StoredVoice]:
        """Each record once: the stored voices (sorted), then the builtin aliases (mapped aliases
        are names of stored voices' records: see `names` and `get`)."""
        voices = self._current()
        return [voices[n] for n in sorted(voices)] + [builtin_voice(a) for a in OPENAI_VOICES if a not in self._aliases]

    def get(self, name: str) -> StoredVoice:
        """The voice called `name` (a mapped alias gives its stored voice's record); VoiceNotFound otherwise."""
        voices = self._current()
        if name in voices:
            return voices[name]
        if name in self._aliases:
            target = self._aliases[name]
            if target in voices:
                return voices[target]
            raise VoiceNotFound(f"alias '{name}' plays voice '{target}', which is no longer stored (deleted through "
                                "another server sharing the folder?): add that voice again or change the aliases")
        if name in OPENAI_VOICES:
            return builtin_voice(name)
        raise VoiceNotFound(f"no voice named {name!r}: use one of {', '.join(self.names())}")

    def watch(self, callback: Callable[[str, StoredVoice | None], None]) -> None:
        """Call `callback(name, voice)` after voice `name` is added or replaced (by this store or,
        seen at a later read, by another process), and `callback(name, None)` after it is deleted."""
        self._listeners.append(callback)

    def refresh(self) -> None:
        """Pick up the voices that other processes sharing the folder added, replaced or deleted.
        Costs one stat when nothing changed (and a listing with a stat per voice for a second after
        a change); a changed voice is loaded once."""
        settled = self._disk.stamp()
        if settled is not None and settled == self._settled:
            return
        if self._disk.stamps() == self._stamps:
            self._settled = settled
            return
        with self._refresh_lock, self._disk.locked(exclusive=False):
            settled = self._disk.stamp()  # before the listing: a change during it changes the stamp again
            stamps = self._disk.stamps()  # again under the lock: no writer is between its two renames now
            with self._lock:
                known, voices = self._stamps, self._voices
            fresh = {n: voices.get(n) if known.get(n) == s else self._load(n, s) for n, s in stamps.items()}
            with self._lock:
                self._stamps, self._voices = stamps, {n: v for n, v in fresh.items() if v is not None}
                self._settled = settled
        for name in sorted(set(known) | set(stamps)):
            if known.get(name) != stamps.get(name):
                self._notify(name, fresh.get(name))

    def _current(self) -> dict[str, StoredVoice]:
        self.refresh()
        with self._lock:
            return self._voices

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
        defaults: VoiceDefaults | None = None,
    ) -> StoredVoice:
        """Decode, check and transcribe one or two recordings (any format ffmpeg reads) into a
        stored voice; nothing is written unless all of it succeeds. `local_adapter=False` takes
        Hub repo ids only (a client's input never names the server's disk)."""
        self.check_free(name, replace)
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
        return self._add(name, audio, files, transcript, adapter, replace, defaults or VoiceDefaults())

    def add_adapter(self, name: str, adapter: str, replace: bool = False, local_adapter: bool = True,
                    defaults: VoiceDefaults | None = None) -> StoredVoice:
        """A voice that is only a LoRA adapter (a PEFT folder or Hub repo id): no prefix."""
        self.check_free(name, replace)
        voice = Voice(adapter=check_adapter(adapter, local_adapter), defaults=defaults or VoiceDefaults(),
                      created=created_now())
        return self._commit(name, voice, {}, replace)

    def set_defaults(self, name: str, changes: dict) -> StoredVoice:
        """Change some of a stored voice's defaults (`VoiceDefaults` fields; None unsets one), in
        place: every process sharing the folder serves the new ones at its next read. A voice
        folder of an older layout is written in the one format (its meta.json goes)."""
        VoiceDefaults().changed(changes)  # an unknown field or a bad value is refused before the disk is touched
        if name not in self._current() and name in OPENAI_VOICES:
            raise VoiceError(f"'{name}' is a builtin OpenAI voice with a fixed seed: its settings cannot change "
                             "(store a voice of your own with the settings you want)", param="name")
        if not changes:
            return self.get(name)
        folder = self.folder / check_name(name)

        def changed(_: dict | None) -> dict:
            voice = read_voice(folder)  # under the folder's lock: another writer's change is kept
            return voice_record(dataclasses.replace(voice, defaults=voice.defaults.changed(changes)), folder)

        try:
            stamp = self._disk.update_json(name, VOICE_FILE, changed, retired=(LEGACY_META,))
        except FileNotFoundError:
            raise VoiceNotFound(f"no voice named {name!r}: use one of {', '.join(self.names())}", param="name") from None
        with self._disk.locked(exclusive=False):
            record = self._load(name, stamp)
        if record is None:
            raise VoiceError(f"voice '{name}' could not be read back after the change: see the server's log")
        with self._lock:
            self._stamps = {**self._stamps, name: stamp}
            self._voices = {**self._voices, name: record}
        self._notify(name, record)
        return record

    def delete(self, name: str) -> None:
        """Remove a stored voice and its folder. Builtin aliases and voices an alias plays cannot be deleted."""
        users = sorted(a for a, t in self._aliases.items() if t == name)
        if users:
            raise VoiceError(f"voice '{name}' is what alias {', '.join(users)} plays: remove it from aliases first")
        try:
            trash = self._disk.move_out(check_name(name))
        except (VoiceError, FileNotFoundError):
            if name in OPENAI_VOICES:
                raise VoiceError(f"'{name}' is a builtin OpenAI voice alias: it cannot be deleted") from None
            raise VoiceNotFound(f"no voice named {name!r}: use one of {', '.join(self.names())}") from None
        with self._lock:
            self._stamps = {n: s for n, s in self._stamps.items() if n != name}
            self._voices = {n: v for n, v in self._voices.items() if n != name}
        shutil.rmtree(trash, ignore_errors=True)
        self._notify(name, None)

    def scan(self, settled_seconds: float = 0.0) -> list[str]:
        """Make each audio file dropped into the folder (<stem>.wav, .m4a ...: the formats every command
        reads, `dia2.audio.recordings`) into voice <stem>, moving it
        (and <stem>.txt, its transcript) into the voice's folder; returns the new names. A file
        that fails is left in place, logged with the reason, and not tried again until it changes.
        Files changed less than `settled_seconds` ago are left for a later scan."""
        added = []
        with self._scan_lock:
            for path in sorted(self.folder.iterdir()):
                if path.name.startswith(".") or not is_audio_file(path) or not path.is_file():
                    continue
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue  # another process sharing the folder took it
                if self._failed.get(path) == (stat.st_size, stat.st_mtime_ns):
                    continue
                if time.time() - stat.st_mtime < settled_seconds:
                    continue
                try:
                    self._adopt(path)
                except VoiceError as exc:
                    if not path.exists():
                        continue  # another process sharing the folder made it a voice first
                    self._failed[path] = (stat.st_size, stat.st_mtime_ns)
                    logger.warning("voice file %s left in place, not made a voice: %s", path, exc)
                else:
                    added.append(path.stem)
        return added

    def start_scanning(self, every: float = SCAN_SECONDS) -> None:
        """Look for dropped-in files every `every` seconds in a background thread (`scan`), so they
        become voices while the server runs; `stop_scanning` ends it."""
        if self._scanning is not None:
            return
        stop = self._scanning = threading.Event()

        def loop() -> None:
            while not stop.wait(every):
                try:
                    self.scan(settled_seconds=every)
                except OSError as exc:  # the folder went away for a moment (a remount): look again later
                    logger.warning("cannot scan the voices folder %s: %s", self.folder, exc)

        threading.Thread(target=loop, daemon=True, name="dia2-voice-scan").start()

    def stop_scanning(self) -> None:
        if self._scanning is not None:
            self._scanning.set()
            self._scanning = None

    # --- internals -----------------------------------------------------------------------------

    def check_free(self, name: str, replace: bool) -> None:
        """Name rules, and a first check that the name is free (`_commit` checks again, under the lock)."""
        check_name(name)
        if name in OPENAI_VOICES and self._aliases.get(name) != name:
            raise VoiceError(
                f"'{name}' is reserved: it is a builtin OpenAI voice, even with replace=true; choose another name "
                f"(or start the store with aliases {{'{name}': '{name}'}} to play a stored voice of that name)",
                param="name",
            )
        if not replace and (self.folder / name).exists():
            raise VoiceExists(f"a voice named '{name}' exists already: pass replace=true to overwrite it")

    def _add(
        self, name: str, audio: dict[str, DecodedAudio], files: dict[str, bytes], transcript: str | None,
        adapter: str | None, replace: bool, defaults: VoiceDefaults,
    ) -> StoredVoice:
        """Checks, make_prefix, then the commit: shared by uploads and dropped-in files."""
        for label, decoded in audio.items():
            check_speech(decoded, label)
        transcript = (transcript or "").strip() or None
        waves = [a.waveform for a in audio.values()]
        with self._work_lock:
            try:
                prefix = self._make_prefix(waves[0], waves[1] if len(waves) > 1 else None, transcript=transcript)
            except PrefixError as exc:
                raise VoiceError(f"voice '{name}': {exc}") from exc
        if not prefix.words:
            raise VoiceError(f"voice '{name}': no words were heard in the recording; send a clip of the speaker talking")
        voice = Voice(prefix=prefix, adapter=adapter, defaults=defaults, transcript=transcript, created=created_now())
        return self._commit(name, voice, files, replace)

    def _adopt(self, path: Path) -> None:
        """Make the dropped-in file `path` into a voice (see `scan`)."""
        name = path.stem
        try:
            self.check_free(name, replace=False)
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
        self._add(name, audio, files, transcript, None, False, VoiceDefaults())
        path.unlink(missing_ok=True)
        if transcript is not None:
            text_file.unlink(missing_ok=True)

    def _commit(self, name: str, voice: Voice, files: dict[str, bytes], replace: bool) -> StoredVoice:
        """Write the voice's folder under a private dot name, then swap it in under the folder's
        lock (the old one stays until then; of two writers of one name, the second is refused
        unless `replace`, when the last one wins)."""
        stage = self._disk.work_path("new", name)
        try:
            stage.mkdir()
            for file_name, data in files.items():
                (stage / file_name).write_bytes(data)
            write_voice(voice, stage)
            try:
                trash, stamp = self._disk.swap_in(stage, name, replace)
            except FileExistsError:
                raise VoiceExists(f"a voice named '{name}' exists already: pass replace=true to overwrite it") from None
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        record = StoredVoice(name, voice, revision=_revision(stamp))
        with self._lock:
            self._stamps = {**self._stamps, name: stamp}
            self._voices = {**self._voices, name: record}
        if trash is not None:  # the replaced voice, under a name tidying deletes, never puts back
            shutil.rmtree(trash, ignore_errors=True)
        logger.info("voice '%s' stored in %s", name, self.folder / name)
        self._notify(name, record)
        return record

    def _load(self, name: str, stamp: Stamp) -> StoredVoice | None:
        """The stored voice in folder `name` (any layout `read_voice` reads), or None (logged) if
        that folder is not one."""
        path = self.folder / name
        try:
            return StoredVoice(check_name(name), read_voice(path), revision=_revision(stamp))
        except (OSError, ValueError, KeyError, TypeError) as exc:  # VoiceError is a ValueError
            logger.warning("%s is not a stored voice, left out: %s", path, exc)
            return None

    def _notify(self, name: str, voice: StoredVoice | None) -> None:
        for callback in self._listeners:
            callback(name, voice)


def _revision(stamp: Stamp) -> str:
    return "-".join(f"{part:x}" for part in stamp)
