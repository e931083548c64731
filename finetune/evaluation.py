"""Evaluation during training: held-out loss, and sample scripts spoken with the current weights.

Neither draws from the training RNGs (samples use their own seeded generator inside a forked
RNG), so evaluating or not, e.g. the extra evaluation at step 0 of a fresh run that a resumed
run does not repeat, never changes what training does next.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from dia2.data.grid import FRAME_RATE
from dia2.generation.loop import GenerationConfig
from dia2.generation.runtime import Dia2
from dia2.text.script import ScriptError
from finetune.config import ConfigError, TrainConfig
from finetune.data import TrainingData, eval_batches, make_batch
from finetune.losses import metrics, training_loss


@torch.no_grad()
def held_out_loss(model: nn.Module, corpus: TrainingData, tts: Dia2, cfg: TrainConfig, accelerator: Any) -> dict[str, float] | None:
    """Loss and accuracies over the validation split (sharded over processes, summed exactly);
    None when the corpus has no validation utterances. `model` is the unwrapped model."""
    if not corpus.validation.examples:
        return None
    data = tts.model.config.data
    batches = eval_batches(
        corpus.validation, cfg.data.max_frames_per_batch, cfg.data.bucket_size,
        accelerator.process_index, accelerator.num_processes, cfg.eval.max_batches,
    )
    sums = torch.zeros(3, 4, dtype=torch.float64, device=accelerator.device)
    was_training = model.training
    model.eval()
    for indices in batches:
        batch = make_batch(corpus.validation.examples, indices, data, tts.ids).to(accelerator.device)
        with accelerator.autocast():
            out = model(batch.tokens)
        sums += training_loss(out, batch, cfg.loss, data.action_pad_token_id).stats.double()
    model.train(was_training)
    return metrics(accelerator.reduce(sums, "sum"), cfg.loss)


def speak_samples(tts: Dia2, scripts: Sequence[str], seed: int, max_seconds: float, folder: Path) -> list[Path]:
    """Speak each script with the model as it is now; writes folder/sample_{i}.wav."""
    folder.mkdir(parents=True, exist_ok=True)
    config = GenerationConfig(seed=seed, max_frames=math.ceil(max_seconds * FRAME_RATE))
    model = tts.model
    was_training = model.training
    model.eval()
    devices = [tts.model.device] if tts.model.device.type == "cuda" else []
    paths = []
    with torch.random.fork_rng(devices=devices):
        for i, script in enumerate(scripts):
            try:
                result = tts.generate(script, config)
            except ScriptError as exc:  # checked before any frame is generated
                raise ConfigError(f"eval.scripts[{i}] does not fit eval.max_sample_seconds={max_seconds}: {exc}") from exc
            paths.append(result.save(folder / f"sample_{i}.wav"))
    model.train(was_training)
    return paths


def check_scripts(tts: Dia2, scripts: Sequence[str]) -> None:
    """Refuse sample scripts the model cannot speak before training starts, not at the first eval."""
    for i, script in enumerate(scripts):
        try:
            tts.parse(script)
        except ScriptError as exc:
            raise ConfigError(f"eval.scripts[{i}] cannot be spoken: {exc}") from exc
