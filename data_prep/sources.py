"""What to read: a folder of recordings or a manifest, and who speaks in each recording.

A folder is searched recursively for audio files the way every command finds recordings
(`dia2.audio.recordings`: hidden files and the output folder are left out, other files are listed
as ignored); a NAME.txt beside a recording is its reference text, as a manifest's text column
would be. A manifest is CSV (with a header) or JSONL, one
recording per row, with the columns:

| column | meaning |
|---|---|
| path | the recording, absolute or relative to the manifest's folder (required) |
| speaker | who speaks in it (optional) |
| speaker_2 | with `speaker`: the file is a dialogue, channel 0 is `speaker`, channel 1 `speaker_2` |
| text | what is said (optional): used to flag transcripts that disagree with it |

Speakers are numbered 1 and 2 ([S1], [S2]); their names come from --speakers, else from the
speaker map or manifest in order of first appearance. Every error here names the input and
the fix, and is raised before any work starts.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from data_prep.config import PrepConfigError, SpeakerOptions
from dia2.audio.recordings import (
    AUDIO_EXTENSIONS,
    FoundRecording,
    TranscriptError,
    find_recordings,
    is_audio_file,
    read_transcript,
    transcript_beside,
)

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("path", "speaker", "speaker_2", "text")
DEFAULT_NAMES = ("speaker_1", "speaker_2")
_SHOW = 5


@dataclass(frozen=True)
class SourceFile:
    """One recording to prepare.

    speakers: the speaker number of each channel ((1, 2): channel 0 is [S1], channel 1 [S2]; with
    --diarize, the two voices of the downmix), or one number for the downmix of all channels.
    """

    path: Path
    name: str  # as recorded in the corpus: relative to the input folder, or as the manifest wrote it
    speakers: tuple[int, ...] = (1,)
    text: str | None = None


@dataclass(frozen=True)
class Sources:
    """The recordings of a run (sorted by name), the speaker names, and files that were not audio."""

    files: tuple[SourceFile, ...]
    speaker_names: tuple[str, ...]
    ignored: tuple[str, ...]


def collect_sources(input_path: Path, options: SpeakerOptions, exclude: Path | None = None) -> Sources:
    """The recordings named by a folder, a single audio file or a manifest file, with their speakers."""
    if not input_path.exists():
        raise PrepConfigError(
            f"input {input_path} does not exist: give a folder of recordings, an audio file or a manifest (.csv, .jsonl)"
        )
    if input_path.is_dir():
        return _from_folder(input_path, options, exclude)
    if is_audio_file(input_path):
        found = FoundRecording(input_path, input_path.name, transcript_beside(input_path))
        return _from_audio([found], [], options)
    if options.speaker_map is not None:
        raise PrepConfigError("--speaker-map is for folder inputs: put the speakers in the manifest's speaker column instead")
    return _from_manifest(input_path, options)


def _from_folder(root: Path, options: SpeakerOptions, exclude: Path | None) -> Sources:
    scan = find_recordings(root, exclude)
    if not scan.recordings:
        shown = ", ".join(sorted(AUDIO_EXTENSIONS)[:8])
        raise PrepConfigError(f"no audio files in {root} (looked for {shown} ... recursively): check the folder")
    return _from_audio(list(scan.recordings), list(scan.ignored), options)


def _from_audio(found: list[FoundRecording], ignored: list[str], options: SpeakerOptions) -> Sources:
    """Sources of recordings found in a folder, named by their path relative to it, with the
    transcript beside each as its reference text."""
    names = [r.name for r in found]
    if options.speaker_map is not None:
        table = read_speaker_map(options.speaker_map)
        _check_map_covers(table, names, options.speaker_map)
        assigned = [table[n] for n in names]
        speaker_names = _speaker_names(options, [n for entry in table.values() for n in entry], str(options.speaker_map))
    else:
        assigned = [() for _ in names]
        speaker_names = _speaker_names(options, [], "")
    files = tuple(
        SourceFile(r.path, r.name, _numbers(entry, speaker_names, options), _reference_text(r))
        for r, entry in zip(found, assigned)
    )
    return Sources(files, speaker_names, tuple(ignored))


def _reference_text(recording: FoundRecording) -> str | None:
    if recording.transcript is None:
        return None
    try:
        return read_transcript(recording.transcript)
    except TranscriptError as exc:
        raise PrepConfigError(f"{recording.name}: {exc}; save it as UTF-8 text, or move it out of the folder") from exc


def read_speaker_map(path: Path) -> dict[str, tuple[str, ...]]:
    """A speaker map file -> {relative path: (speaker,) or (channel 0 speaker, channel 1 speaker)}."""
    if not path.is_file():
        raise PrepConfigError(f"--speaker-map {path} not found: give a JSON or CSV file")
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PrepConfigError(f"--speaker-map {path} is not valid JSON ({exc})") from exc
        if not isinstance(raw, dict):
            raise PrepConfigError(f'--speaker-map {path} must be a JSON object {{"file.wav": "alice", ...}}')
        return {str(k): _map_entry(v, f"{path} entry {k!r}") for k, v in raw.items()}
    rows = _read_table(path, "--speaker-map", ("path", "speaker", "speaker_2"), required=("path", "speaker"))
    return {row["path"]: _map_entry([row["speaker"], row.get("speaker_2")], f"{path} line {row['_line']}") for row in rows}


def _map_entry(value: object, where: str) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) or v is None for v in values):
        raise PrepConfigError(f"{where}: a speaker is a name or a list of two names (one per channel), got {value!r}")
    names = tuple(v.strip() for v in values if v is not None and v.strip())
    if not 1 <= len(names) <= 2:
        raise PrepConfigError(f"{where}: give one speaker name, or two (one per channel), got {value!r}")
    return names


def _check_map_covers(table: dict[str, tuple[str, ...]], names: list[str], map_path: Path) -> None:
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise PrepConfigError(
            f"--speaker-map {map_path} names {len(unknown)} file(s) not found in the input folder: {_list(unknown)}; "
            "paths are relative to the input folder, with forward slashes"
        )
    missing = [n for n in names if n not in table]
    if missing:
        raise PrepConfigError(
            f"--speaker-map {map_path} gives no speaker for {len(missing)} recording(s): {_list(missing)}; add them to the map"
        )


def _from_manifest(path: Path, options: SpeakerOptions) -> Sources:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _read_table(path, "manifest", MANIFEST_COLUMNS, required=("path",))
    elif suffix in (".jsonl", ".ndjson"):
        rows = _read_jsonl(path)
    else:
        raise PrepConfigError(f"input {path} is a file but not a manifest: give a folder, or a .csv / .jsonl manifest")
    if not rows:
        raise PrepConfigError(f"manifest {path} lists no recordings")
    seen: dict[str, int] = {}
    for row in rows:
        if row["path"] in seen:
            raise PrepConfigError(f"manifest {path} line {row['_line']}: {row['path']} is already listed on line {seen[row['path']]}")
        seen[row["path"]] = row["_line"]
    entries = [_manifest_speakers(row, path) for row in rows]
    speaker_names = _speaker_names(options, [n for e in entries for n in e], f"manifest {path}")
    files = [
        SourceFile(_resolve(path.parent, row["path"]), row["path"], _numbers(entry, speaker_names, options), row.get("text") or None)
        for row, entry in zip(rows, entries)
    ]
    return Sources(tuple(sorted(files, key=lambda f: f.name)), speaker_names, ())


def _manifest_speakers(row: dict, path: Path) -> tuple[str, ...]:
    first, second = (row.get("speaker") or "").strip(), (row.get("speaker_2") or "").strip()
    if second and not first:
        raise PrepConfigError(f"manifest {path} line {row['_line']}: speaker_2 is given without speaker (channel 0's)")
    return tuple(n for n in (first, second) if n)


def _read_table(path: Path, what: str, allowed: tuple[str, ...], required: tuple[str, ...]) -> list[dict]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            _check_columns(header, allowed, required, f"{what} {path}")
            rows = []
            for line, raw in enumerate(reader, start=2):
                row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
                if not any(row.values()):
                    continue
                if not row.get("path"):
                    raise PrepConfigError(f"{what} {path} line {line}: the path is empty")
                rows.append({**row, "_line": line})
            return rows
    except UnicodeDecodeError as exc:
        raise PrepConfigError(f"{what} {path} is not UTF-8 text ({exc})") from exc
    except csv.Error as exc:
        raise PrepConfigError(f"{what} {path} is not valid CSV ({exc})") from exc


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PrepConfigError(f"manifest {path} line {line} is not JSON ({exc})") from exc
        if not isinstance(raw, dict):
            raise PrepConfigError(f'manifest {path} line {line}: each line must be an object like {{"path": "a.wav"}}')
        _check_columns(list(raw), MANIFEST_COLUMNS, ("path",), f"manifest {path} line {line}")
        if not isinstance(raw["path"], str) or not raw["path"].strip():
            raise PrepConfigError(f"manifest {path} line {line}: path must be a non-empty string")
        rows.append({k: (v.strip() if isinstance(v, str) else v) for k, v in raw.items()} | {"_line": line})
    return rows


def _check_columns(found: list[str], allowed: tuple[str, ...], required: tuple[str, ...], where: str) -> None:
    unknown = [c for c in found if c not in allowed]
    missing = [c for c in required if c not in found]
    if unknown or missing:
        parts = ([f"unknown column(s) {', '.join(unknown)}"] if unknown else []) + (
            [f"missing column(s) {', '.join(missing)}"] if missing else []
        )
        raise PrepConfigError(f"{where}: {'; '.join(parts)}; the columns are {', '.join(allowed)} ({', '.join(required)} required)")


def _speaker_names(options: SpeakerOptions, used: list[str], where: str) -> tuple[str, ...]:
    """The names of [S1] (and [S2]): --speakers, else the names used, in order of first appearance."""
    if options.speakers:
        unknown = sorted(set(used) - set(options.speakers))
        if unknown:
            raise PrepConfigError(
                f"{where} names unknown speaker(s) {', '.join(unknown)}; --speakers declares {', '.join(options.speakers)}: "
                "fix the names or add them to --speakers"
            )
        return tuple(options.speakers)
    if used:
        names = tuple(dict.fromkeys(used))
        if len(names) > 2:
            raise PrepConfigError(
                f"{where} names {len(names)} speakers ({', '.join(names)}) but Dia2 has two slots ([S1], [S2]): "
                "prepare one corpus per pair of speakers"
            )
        return names
    return DEFAULT_NAMES if options.stereo else DEFAULT_NAMES[:1]


def _numbers(entry: tuple[str, ...], names: tuple[str, ...], options: SpeakerOptions) -> tuple[int, ...]:
    if entry:
        return tuple(names.index(n) + 1 for n in entry)
    return (1, 2) if options.stereo or options.diarize else (1,)


def _resolve(base: Path, text: str) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def _list(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    return shown + (f" ... and {len(items) - _SHOW} more" if len(items) > _SHOW else "")
