"""A run folder's layout and its voice file, read without torch: `finetune.push` and the trainer's
refusals use this before anything heavy is imported. What each file holds: `finetune.outputs`.

`dia2_voice.json` (not `voice.json`, which names a stored voice prefix in dia2) describes the
voice: who speaks as [S1]/[S2], the corpus and its meta, and a training summary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dia2.progress import PROGRESS_FILE

VOICE_FILE = "dia2_voice.json"
VOICE_FORMAT = "dia2-voice/1"


@dataclass(frozen=True)
class RunPaths:
    """The files and folders of one run."""

    root: Path

    RESUMES = "resumes.jsonl"
    """What each resume changed in the config (config.yaml holds the values in effect now)."""

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def resumes(self) -> Path:
        return self.root / self.RESUMES

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def progress(self) -> Path:
        return self.root / PROGRESS_FILE

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    @property
    def loss_png(self) -> Path:
        return self.root / "loss.png"

    @property
    def weights(self) -> Path:
        """The folder holding the trained voice: adapter/ (LoRA) or model/ (full fine-tuning)."""
        return self.model if (self.model / VOICE_FILE).is_file() else self.adapter


def voice_file_text(voice: dict[str, Any]) -> str:
    """The text of dia2_voice.json for `voice` (its content without the format tag)."""
    return json.dumps({"format": VOICE_FORMAT, **voice}, indent=2) + "\n"


def write_voice_file(folder: Path, voice: dict[str, Any]) -> Path:
    path = folder / VOICE_FILE
    path.write_text(voice_file_text(voice), encoding="utf-8")
    return path


def read_voice_file(folder: Path) -> dict[str, Any]:
    path = folder / VOICE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {VOICE_FILE}: pass the adapter folder of a finished run")
    return json.loads(path.read_text(encoding="utf-8"))


def finished_runs(folder: Path) -> list[str]:
    """Names of the finished runs (a trained voice with its voice file) in `folder`, sorted."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and (RunPaths(p).weights / VOICE_FILE).is_file())
