"""Finding recordings in a folder, one way for every command: data prep's input folder and
dia2-eval's references.

Every audio file under the folder, recursively (hidden files and folders left out), in the
formats `AUDIO_EXTENSIONS` lists, sorted by its path relative to the folder; a text file beside a
recording with its name (`take 1.txt` beside `take 1.flac`) is its transcript. Other files are
listed as ignored. The formats live here only, so reading more of them is one change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dia2.errors import Dia2Error

AUDIO_EXTENSIONS = frozenset(
    ".wav .wave .rf64 .w64 .flac .aif .aiff .aifc .au .snd .caf .voc .paf .svx .nist .sph .avr .ircam .sf .pvf .sds"
    " .mp3 .mp2 .ogg .oga .opus .spx .m4a .m4b .aac .wma .asf .ac3 .amr .wv .ape .tta .mpc"
    " .mp4 .m4v .mov .qt .3gp .3g2 .webm .mkv .mka .avi".split()
)
"""Extensions of the audio and video files `dia2.audio.io.decode_audio_file` (PyAV, ffmpeg's
libraries) reads: a video's first audio stream is its recording. Raw PCM is left out (no header)."""
TRANSCRIPT_SUFFIX = ".txt"


class TranscriptError(Dia2Error, ValueError):
    """A transcript beside a recording that cannot be read; the message names it and the fix."""


@dataclass(frozen=True)
class FoundRecording:
    """An audio file under the folder: its path, its name relative to the folder (forward
    slashes), and the transcript beside it, if there is one."""

    path: Path
    name: str
    transcript: Path | None


@dataclass(frozen=True)
class FolderScan:
    """What a folder holds: its recordings (sorted by name) and the other files (relative names)."""

    recordings: tuple[FoundRecording, ...]
    ignored: tuple[str, ...]


def is_audio_file(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS


def transcript_beside(path: Path) -> Path | None:
    """The transcript file beside recording `path`, if there is one."""
    beside = path.with_suffix(TRANSCRIPT_SUFFIX)
    return beside if beside.is_file() else None


def find_recordings(root: Path, exclude: Path | None = None) -> FolderScan:
    """The recordings under `root`, with their transcripts; `exclude`: a folder under root to
    leave out (e.g. the output written beside the recordings)."""
    exclude = exclude.resolve() if exclude is not None else None
    if exclude == root.resolve():
        exclude = None  # output written into the folder itself: what we write there is not audio
    files = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if exclude is not None and (path.resolve() == exclude or exclude in path.resolve().parents):
            continue
        files.append(path)
    audio = [p for p in files if is_audio_file(p)]
    recordings = tuple(FoundRecording(p, p.relative_to(root).as_posix(), transcript_beside(p)) for p in audio)
    transcripts = {r.transcript for r in recordings}
    ignored = tuple(p.relative_to(root).as_posix() for p in files if not is_audio_file(p) and p not in transcripts)
    return FolderScan(recordings, ignored)


def read_transcript(path: Path) -> str | None:
    """A transcript's text (None when it is blank); TranscriptError when it is not UTF-8 text."""
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError) as exc:
        raise TranscriptError(f"{path.name} (its transcript; not readable as UTF-8 text: {exc})") from exc
