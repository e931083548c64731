"""Evaluation during training: held-out loss, sample scripts spoken with the current weights and
scored by dia2-eval's `ClipScorer` (WER/CER, speaker similarity, behaviour), and keep-best.

None of it draws from the training RNGs (samples use their own seeded generator inside a forked
RNG), so evaluating or not, e.g. the extra evaluation at step 0 of a fresh run that a resumed
run does not repeat, never changes what training does next.

Keep-best: after an evaluation that improves eval.metric, the adapter as it is now goes to
runs/NAME/best/ (a plain PEFT folder) with best.json (step, metric, value, scores). The record
of the best so far is that file, so a resumed run keeps competing with the best of its earlier
part; a best/ from a later step than the current one (an earlier attempt) is replaced.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast_object_list
from torch import nn

from dia2.errors import Dia2Error
from dia2.evaluation.inputs import read_references
from dia2.evaluation.run import Clip, aggregate
from dia2.evaluation.scoring import ClipScorer, ClipTranscriber
from dia2.generation.config import GenerationConfig
from dia2.generation.tts import Dia2, GenerationResult
from dia2.model.config import FRAME_RATE
from dia2.model.peft_api import PeftModel
from dia2.text.script import ScriptError
from finetune.config import EvalSection, TrainConfig, TrainConfigError
from finetune.data import TrainingData, eval_batches, make_batch
from finetune.losses import metrics, training_loss
from finetune.modeling import is_sharded

logger = logging.getLogger(__name__)


@torch.no_grad()
def held_out_loss(model: nn.Module, corpus: TrainingData, tts: Dia2, cfg: TrainConfig, accelerator: Any) -> dict[str, float] | None:
    """Loss and accuracies over the validation split (sharded over processes, summed exactly);
    None when the corpus has no validation utterances. `model` is the unwrapped model."""
    if not corpus.validation.examples:
        return None
    data = tts.model.config.data
    every = eval_batches(corpus.validation, cfg.data.max_frames_per_batch, cfg.data.bucket_size, 0, 1, cfg.eval.max_batches)
    rank, world = accelerator.process_index, accelerator.num_processes
    batches: list[list[int] | None] = list(every[rank::world])
    if is_sharded(accelerator):
        # A sharded forward gathers weights from every process: each runs as many forwards as the
        # busiest one, the extra ones on a batch whose stats are left out.
        batches += [None] * (math.ceil(len(every) / world) - len(batches))
    sums = torch.zeros(3, 4, dtype=torch.float64, device=accelerator.device)
    was_training = model.training
    model.eval()
    for indices in batches:
        batch = make_batch(corpus.validation.examples, indices or every[0], data, tts.ids).to(accelerator.device)
        with accelerator.autocast():
            out = model(batch.tokens)
        if indices is not None:
            sums += training_loss(out, batch, cfg.loss, data.action_pad_token_id).stats.double()
    model.train(was_training)
    return metrics(accelerator.reduce(sums, "sum"), cfg.loss)


def speak_samples(
    tts: Dia2, scripts: Sequence[str], seed: int, max_seconds: float, folder: Path
) -> list[tuple[Path, GenerationResult]]:
    """Speak each script with the model as it is now; writes folder/sample_{i}.wav. Returns each
    file with the generation (audio, word timestamps, whether it hit the frame limit)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = GenerationConfig(seed=seed, max_frames=math.ceil(max_seconds * FRAME_RATE))
    model = tts.model
    was_training = model.training
    model.eval()
    devices = [tts.model.device] if tts.model.device.type == "cuda" else []
    spoken = []
    with torch.random.fork_rng(devices=devices):
        for i, script in enumerate(scripts):
            try:
                result = tts.generate(script, config)
            except ScriptError as exc:  # checked before any frame is generated
                raise TrainConfigError(f"eval.scripts[{i}] does not fit eval.max_sample_seconds={max_seconds}: {exc}") from exc
            spoken.append((result.save(folder / f"sample_{i}.wav"), result))
    model.train(was_training)
    return spoken


def speak_and_score(tts: Dia2, section: EvalSection, folder: Path) -> tuple[list[Path], dict[str, Any]]:
    """Speak eval.scripts into `folder` and, when eval.asr_model or eval.references is set, score
    them (folder/scores.json: every clip and the aggregate). Returns the sample paths and the
    aggregate scores (empty when nothing scores them)."""
    spoken = speak_samples(tts, section.scripts, section.seed, section.max_sample_seconds, folder)
    if section.asr_model is None and section.references is None:
        return [path for path, _ in spoken], {}
    scorer = sample_scorer(section.references, section.asr_model, tts.codec.sample_rate, tts.model.device.type,
                           section.language)
    clips = [
        Clip("samples", i, script, section.seed, path.name, scorer.score(
            result.waveform, result.sample_rate, script, timestamps=result.timestamps, hit_frame_limit=result.truncated))
        for i, ((path, result), script) in enumerate(zip(spoken, section.scripts))
    ]
    scores = aggregate(clips)
    record = {"aggregate": scores, "clips": [c.as_dict() for c in clips]}
    (folder / "scores.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return [path for path, _ in spoken], scores


@functools.cache
def sample_scorer(
    references: str | None, asr_model: str | None, sample_rate: int, device: str, language: str | None = None
) -> ClipScorer:
    """The scorer of a run's samples, built once per run (by `check_evaluation`, at start-up) and
    kept, so the recogniser and the speaker encoder load once. A bad folder or model raises its
    own Dia2Error."""
    waves = [r.waveform for r in read_references(references, sample_rate)] if references else None
    asr = ClipTranscriber(asr_model, device=device, model_option="eval.asr_model", language=language,
                          language_option="eval.language") if asr_model else None
    return ClipScorer(waves, reference_rate=sample_rate, asr=asr, device=device, language=language)


LOWER_IS_BETTER = {"loss": True, "wer": True, "cer": True, "similarity": False}
BEST_FILE = "best.json"


def keep_best(
    model: nn.Module, folder: Path, step: int, metric: str, scores: dict[str, Any],
    weights: dict[str, torch.Tensor] | None = None,
) -> bool:
    """Copy the adapter of `model` (a PeftModel) to `folder` with best.json when scores[metric]
    beats the best recorded there; returns whether it did (not when scores[metric] is None: it
    logs a warning; never for an adapter that changes nothing). Written beside and renamed into place.
    `weights`: the LoRA tensors gathered whole from FSDP shards (default: the model's own)."""
    if not isinstance(model, PeftModel):
        raise TrainConfigError("eval.keep_best keeps a LoRA adapter; a full fine-tune (lora.full_finetune=true) has none: set eval.keep_best=false")
    if changes_nothing(model, weights):
        # E.g. the untrained adapter of step 0: PEFT starts every lora_B at zero.
        logger.info("step %d: the adapter changes nothing yet (every LoRA update is zero): best/ is left as it is", step)
        return False
    value = scores.get(metric)
    if value is None:
        # E.g. no speech in any sample yet (no similarity), early in training: nothing to rank.
        logger.warning("eval.metric=%s has no value at step %d: best/ is left as it is", metric, step)
        return False
    best = _read_best(folder)
    if best is not None and best["step"] < step:
        better = value < best["value"] if LOWER_IS_BETTER[metric] else value > best["value"]
        if not better:
            return False
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        model.save_pretrained(str(work), state_dict=weights, save_embedding_layers=False)
        record = {"step": step, "metric": metric, "value": value, "scores": scores}
        (work / BEST_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(work, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return True


def changes_nothing(model: nn.Module, weights: dict[str, torch.Tensor] | None = None) -> bool:
    """Whether a LoRA adapter adds nothing to its base: in every adapted layer lora_A or lora_B is
    all zeros (the delta is their product). `weights`: its tensors by name (default: the model's)."""
    tensors = weights if weights is not None else dict(model.named_parameters())
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        for kind in ("lora_A", "lora_B"):
            if f".{kind}." in name:
                layers.setdefault(name.split(f".{kind}.")[0], {})[kind] = tensor
    return all(any(not bool(t.detach().any()) for t in pair.values()) for pair in layers.values())


def _read_best(folder: Path) -> dict[str, Any] | None:
    path = folder / BEST_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # a damaged record is replaced by the next evaluation


def check_evaluation(section: EvalSection, corpus: TrainingData, tts: Dia2, accelerator: Any) -> None:
    """Refuse evaluation settings that would fail at an evaluation, before training starts (and
    before the run folder is made): sample scripts the model cannot speak, keep-best by a
    held-out loss the corpus cannot give, references or a recogniser that do not load.

    Collective: every process calls it and every process raises the same error. The scorer is
    built on the main process (the only one that scores samples) and kept for the evaluations."""
    for i, script in enumerate(section.scripts):
        try:
            tts.parse(script)
        except ScriptError as exc:
            raise TrainConfigError(f"eval.scripts[{i}] cannot be spoken: {exc}") from exc
    if section.keep_best and section.metric == "loss" and not corpus.validation.examples:
        raise TrainConfigError(
            "eval.keep_best by eval.metric=loss needs a validation split, and data.corpus has none: rank by "
            "eval.metric=wer, cer or similarity, make the corpus again with a validation split, or set eval.keep_best=false"
        )
    problem = None
    if accelerator.is_main_process:
        try:
            if section.scripts and (section.asr_model or section.references):
                # Reads the references and loads the recogniser once, for every evaluation.
                scorer = sample_scorer(section.references, section.asr_model, tts.codec.sample_rate, tts.model.device.type,
                                       section.language)
                if isinstance(scorer.transcriber, ClipTranscriber):
                    scorer.transcriber.load()  # otherwise loaded at the first sample it scores
            elif section.references:
                read_references(section.references, tts.codec.sample_rate)  # unused without scripts, but refused if bad
        except Dia2Error as exc:
            problem = str(exc)
    if accelerator.num_processes > 1:
        [problem] = broadcast_object_list([problem])
    if problem is not None:
        raise TrainConfigError(problem)
