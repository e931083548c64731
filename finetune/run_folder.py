"""A run folder's layout and the voice it yields, read without torch: `finetune.push` and the
trainer's refusals use this before anything heavy is imported. What each file holds:
`finetune.outputs`.

A finished LoRA run's adapter/ folder is a voice (`dia2.generation.voice`, the one folder format):
PEFT's own files plus a voice.json whose adapter is the folder itself and whose "run" is the
run's record: who speaks as [S1]/[S2], the corpus and its meta, a training summary, the samples,
license and consent. A full fine-tune's model/ folder keeps the same voice.json beside the model
(no adapter: the folder is loaded as the model). Runs from before the one format hold the record
in dia2_voice.json instead; they still read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dia2.generation.voice import Voice, created_now, read_voice, voice_file, write_voice
from dia2.progress import PROGRESS_FILE


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
        return self.model if voice_file(self.model) is not None else self.adapter


def run_voice(folder: Path, run: dict[str, Any]) -> Voice:
    """The voice a run yields in `folder`: its adapter, when the folder holds one (PEFT's files),
    and the run's record."""
    adapter = str(folder) if (folder / "adapter_config.json").is_file() else None
    return Voice(adapter=adapter, created=created_now(), run=run)


def write_run_voice(folder: Path, run: dict[str, Any]) -> Path:
    """Write the voice file of the trained folder `folder` (adapter/ or model/), for `run`'s record."""
    return write_voice(run_voice(folder, run), folder)


def read_run_voice(folder: Path) -> Voice:
    """The voice a finished run's adapter folder holds (in any layout); FileNotFoundError when it
    holds none or no run record."""
    if voice_file(folder) is None:
        raise FileNotFoundError(f"{folder} has no voice file: pass the adapter folder of a finished run")
    voice = read_voice(folder)
    if voice.run is None:
        raise FileNotFoundError(f"{folder}'s voice has no run record: pass the adapter folder of a finished run")
    return voice


def finished_runs(folder: Path) -> list[str]:
    """Names of the finished runs (a trained voice with its voice file) in `folder`, sorted."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and voice_file(RunPaths(p).weights) is not None)
