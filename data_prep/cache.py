"""Per-recording results on disk, so a killed run continues where it stopped.

Each prepared recording is stored as `<key>.npz` (codes) + `<key>.json` (everything else), each
written to a temporary name and renamed into place (`os.replace` is atomic), the JSON last: an
entry exists once its JSON does, and is then complete. The key hashes what the result depends
on: the file's content, size and modification time, how it is to be read (name, speakers,
reference text), and every option that changes rows or skips (`options_digest`). Output-only
options (split, seed, Hub) are left out, so changing them reuses every entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.config import PrepConfig
from data_prep.results import FileResult, Skip
from data_prep.sources import SourceFile
from dia2.text.normalize import NORMALIZATION_VERSION

logger = logging.getLogger(__name__)

CACHE_DIR = ".dia2-prep-cache"
CACHE_VERSION = 3  # 3: any container (PyAV), the loudness, VAD, DNSMOS and diarisation stages, per-recording figures
"""Bump when what a cache entry holds, or how a recording is prepared, changes."""
_READ_BLOCK = 1 << 20


def file_fingerprint(path: Path) -> str:
    """Hash of the file's bytes, size and modification time ('missing' if it cannot be read)."""
    try:
        stat = path.stat()
        digest = hashlib.blake2b(digest_size=16)
        with path.open("rb") as f:
            for block in iter(lambda: f.read(_READ_BLOCK), b""):
                digest.update(block)
    except OSError:
        return "missing"
    return f"{digest.hexdigest()}:{stat.st_size}:{stat.st_mtime_ns}"


def options_digest(
    config: PrepConfig, codec_fingerprint: str, tokenizer_fingerprint: str, asr_identity: str,
    max_frames: int, speaker_names: tuple[str, ...],
) -> str:
    """Hash of every setting that changes what a recording yields."""
    settings = {
        "version": CACHE_VERSION,
        "codec": codec_fingerprint,
        "codec_dtype": config.model.codec_dtype,
        "tokenizer": tokenizer_fingerprint,
        "asr": asr_identity,
        "text_normalization": NORMALIZATION_VERSION,
        "chunk_seconds": config.asr.chunk_seconds,
        "segment": asdict(config.segment),
        "filters": asdict(config.filters),
        "loudness": asdict(config.loudness),
        "vad": asdict(config.vad),
        "quality": asdict(config.quality),
        "diarize": _diarization(config),
        "max_frames": max_frames,
        "speaker_names": list(speaker_names),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]


def _diarization(config: PrepConfig) -> dict[str, Any] | None:
    """What --diarize's result depends on: its options and each enrollment clip's content."""
    if not config.speaker.diarize:
        return None
    clips = {name: file_fingerprint(path).split(":")[0] for name, path in sorted(config.speaker.enrollment.items())}
    return {"options": asdict(config.diarization), "enroll": clips}


def entry_key(source: SourceFile, fingerprint: str, options: str) -> str:
    """The cache key of one recording under one set of options."""
    raw = json.dumps([source.name, list(source.speakers), source.text, fingerprint, options])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


class FileCache:
    """A folder of prepared recordings, keyed by `entry_key`."""

    def __init__(self, folder: Path, clean: bool = True) -> None:
        """clean: delete files half-written by a killed run. Of several processes sharing the
        cache only the main one cleans, before the others start, or it could delete a file
        another process is writing."""
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".*.tmp") if clean else ():
            stale.unlink(missing_ok=True)

    def load(self, key: str) -> FileResult | None:
        """The stored result, or None when absent (a damaged entry counts as absent)."""
        meta_path = self.folder / f"{key}.json"
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            with np.load(self.folder / f"{key}.npz") as arrays:
                codes = [arrays[f"codes_{i}"] for i in range(len(meta["rows"]))]
            rows = [{**row, "codes": c} for row, c in zip(meta["rows"], codes)]
            skips = [Skip(**s) for s in meta["skips"]]
            return FileResult(meta["source"], meta["seconds"], meta["wer"], rows, skips, meta["notes"], meta["figures"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("cache entry %s is damaged (%s); preparing the recording again", meta_path, exc)
            return None

    def store(self, key: str, result: FileResult) -> None:
        """Write the result atomically: codes first, then the JSON that marks the entry complete."""
        arrays = {f"codes_{i}": np.asarray(row["codes"], dtype=np.int16) for i, row in enumerate(result.rows)}
        _atomic_write(self.folder / f"{key}.npz", lambda f: np.savez(f, **arrays))
        meta = {
            "source": result.source,
            "seconds": result.seconds,
            "wer": result.wer,
            "rows": [{k: v for k, v in row.items() if k != "codes"} for row in result.rows],
            "skips": [s.to_dict() for s in result.skips],
            "notes": result.notes,
            "figures": result.figures,
        }
        text = json.dumps(meta, indent=1, default=_plain)
        _atomic_write(self.folder / f"{key}.json", lambda f: f.write(text.encode("utf-8")))

    def __contains__(self, key: str) -> bool:
        return (self.folder / f"{key}.json").is_file()


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        write(f)
    os.replace(tmp, path)


def _plain(value: Any) -> Any:
    """JSON for numpy scalars that slip into rows."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in the cache")
