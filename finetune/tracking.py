"""Optional experiment trackers (wandb or tensorboard) through Accelerate, plus audio samples.

Metrics always go to `metrics.jsonl`; a tracker is an extra view of them. Tracker files are
written under the run folder (`wandb/` or `tensorboard/`); wandb runs offline with
WANDB_MODE=offline.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Sequence

import soundfile as sf
import torch

from finetune.config import TrainConfigError

logger = logging.getLogger(__name__)

def accelerate_kwargs(tracker: str, run_dir: Path) -> dict[str, Any]:
    """Accelerator(...) arguments for `output.tracker`; refuses a tracker whose package is missing."""
    if tracker == "none":
        return {}
    if importlib.util.find_spec(tracker) is None:  # the package is named as the tracker
        raise TrainConfigError(f"output.tracker={tracker} needs the {tracker} package: pip install {tracker}")
    return {"log_with": tracker, "project_dir": str(run_dir / tracker)}


class Tracker:
    """Logs scalars and audio to the configured tracker (main process only); a no-op for none."""

    def __init__(self, accelerator: Any, tracker: str, project: str, run_dir: Path, run_name: str, config: dict) -> None:
        self.accelerator, self.kind = accelerator, tracker
        if tracker == "none":
            return
        init = {"wandb": {"dir": str(run_dir), "name": run_name}} if tracker == "wandb" else {}
        if accelerator.is_main_process:
            (run_dir / tracker).mkdir(parents=True, exist_ok=True)
        accelerator.init_trackers(project, config=_flat(config), init_kwargs=init)

    def log(self, values: dict[str, Any], step: int, prefix: str) -> None:
        if self.kind == "none":
            return
        numbers = {f"{prefix}/{k}": v for k, v in values.items() if isinstance(v, (int, float)) and k != "step"}
        self.accelerator.log(numbers, step=step)

    def log_audio(self, paths: Sequence[Path], step: int) -> None:
        if self.kind == "none" or not self.accelerator.is_main_process:
            return
        backend = self.accelerator.get_tracker(self.kind, unwrap=True)
        for path in paths:
            tag = f"samples/{path.stem}"
            if self.kind == "wandb":
                import wandb

                backend.log({tag: wandb.Audio(str(path))}, step=step)
            else:
                audio, rate = sf.read(str(path), dtype="float32")
                backend.add_audio(tag, torch.from_numpy(audio)[None], step, sample_rate=rate)

    def close(self) -> None:
        if self.kind != "none":
            self.accelerator.end_training()


def _flat(config: dict, prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1}} -> {"optim.lr": 1}; lists as strings (trackers take scalars)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
    return out
