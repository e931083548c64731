"""What a run leaves behind in `runs/<name>/` (its layout: `finetune.run_folder.RunPaths`).

| path | what |
|---|---|
| config.yaml | the resolved config (as of the last invocation) |
| resumes.jsonl | what each resume changed in it (e.g. more optim.steps), at which step |
| metrics.jsonl | one JSON object per training step and per evaluation |
| progress.json | what the run does now (`dia2.progress.ProgressFile`: phase, step of steps, time left), for a page that watches it |
| checkpoints/step_N/ | resumable checkpoints, the last output.keep_last (finetune.checkpoint) |
| samples/step_N/sample_i.wav | sample scripts spoken at each evaluation |
| adapter/ | a voice folder: PEFT save_pretrained output + voice.json (adapter ".", the run's record) + README.md (the model card) |
| model/ | instead of adapter/ for full fine-tuning: a complete model folder, with the run's voice.json |
| merged/ | with --export-merged: base + adapter as full weights, a complete model folder |
| loss.png | the loss curves |
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dia2.model.adapters import load_adapter
from dia2.model.assets import DEFAULT_MANIFEST
from dia2.model.checkpoint import resolve_files, save_model
from dia2.model.config import Dia2Config
from dia2.model.network import Dia2Model
from dia2.generation.voice import LEGACY_RUN_FILE, VOICE_FILE
from dia2.tiny import model_source
from finetune.run_folder import RunPaths, write_run_voice

logger = logging.getLogger(__name__)

_MODEL_FILES = ("config.json", "model.safetensors", "README.md", VOICE_FILE, LEGACY_RUN_FILE)


class MetricsLog:
    """Append-only metrics.jsonl, written by the main process."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def truncate(self, last_step: int) -> None:
        """Drop records after `last_step`: a resumed run writes them again."""
        if self.enabled and self.path.is_file():
            kept = [r for r in read_metrics(self.path) if r["step"] <= last_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def save_adapter(
    peft_model: nn.Module, folder: Path, run: dict[str, Any], weights: dict[str, torch.Tensor] | None = None
) -> Path:
    """PEFT's own adapter folder, made a voice by its voice file (adapter ".", `run` its record). `weights`: the trained LoRA tensors by
    parameter name, whole (gathered from FSDP shards); default: the model's own.
    save_embedding_layers=False: PEFT would otherwise look the base config up (online) to decide
    whether embeddings were resized."""
    peft_model.save_pretrained(str(folder), state_dict=weights, save_embedding_layers=False)
    write_run_voice(folder, run)
    return folder


def save_full_model(
    config: Dia2Config, weights: dict[str, torch.Tensor], source: str, folder: Path, run: dict[str, Any]
) -> Path:
    """A complete model folder (weights in the published layout, tokenizer, codec) for full
    fine-tuning, with the run's voice file (`run` its record). `weights`: every weight by name,
    whole (gathered from FSDP shards if need be)."""
    model = Dia2Model.from_config(config, device="meta")
    model.load_state_dict(weights, assign=True)  # strict: a missing weight is a bug, not a default
    save_model(model, folder)
    copy_model_assets(source, folder)
    write_run_voice(folder, run)
    return folder


def export_merged(source: str, adapter: Path, folder: Path) -> Path:
    """Fold the adapter into a fresh float32 copy of the base and write it as a model folder.

    A fresh load (rather than merging the trained model in place) works for QLoRA too, whose base
    in memory is quantized, and goes through `dia2.model.adapters.load_adapter`, the inference path.
    """
    merged = load_adapter(Dia2Model.from_pretrained(source, dtype=torch.float32, device="cpu"), adapter, merge=True)
    save_model(merged, folder)
    copy_model_assets(source, folder)
    logger.info("wrote merged model %s", folder)
    return folder


def copy_model_assets(source: str, folder: Path) -> None:
    """Make `folder` (holding config.json + model.safetensors) a complete model like `source`.

    A local base: its tokenizer files, manifest and codec folder are copied. A Hub base: a
    manifest names the base repo as the tokenizer source (and its codec, if it named one).
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = Path(source)
    if path.is_dir():
        for item in path.iterdir():
            if item.name in _MODEL_FILES or item.name.startswith("."):
                continue
            if item.is_dir():
                shutil.copytree(item, folder / item.name, dirs_exist_ok=True)
            else:
                shutil.copy2(item, folder / item.name)
        return
    files = resolve_files(model_source(source))
    manifest = {"tokenizer": files.tokenizer or source}
    if files.mimi:
        manifest["mimi"] = files.mimi
    (folder / DEFAULT_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def loss_curve(metrics_path: Path, png: Path) -> Path | None:
    """Train and held-out loss, and the per-stream train losses, against step; None without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is not installed: no %s (pip install matplotlib)", png.name)
        return None
    records = read_metrics(metrics_path) if metrics_path.is_file() else []
    train = [r for r in records if r["split"] == "train"]
    held = [r for r in records if r["split"] == "eval"]
    fig = Figure(figsize=(10, 4), layout="constrained")
    total, streams = fig.subplots(1, 2)
    total.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    if held:
        total.plot([r["step"] for r in held], [r["loss"] for r in held], "o-", label="held-out")
    total.set(xlabel="step", ylabel="loss", title="total loss")
    total.legend()
    for name in ("action", "cb0", "depformer"):
        streams.plot([r["step"] for r in train], [r[f"loss_{name}"] for r in train], label=name)
    streams.set(xlabel="step", ylabel="cross-entropy", title="train loss per stream", yscale="log")
    streams.legend()
    fig.savefig(png, dpi=100)
    return png
