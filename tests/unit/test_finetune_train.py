"""finetune.train's gradient accumulation (`accumulate_gradients`): k micro-batches accumulated
give the gradient of one batch k times as large, for LoRA and full fine-tuning, on one process
and under DDP (two gloo processes launched with torchrun: this file is also their script).

Each loss is a mean over its batch's targets, so accumulating the mean of k micro-batch losses
is the large batch's loss only when every micro-batch weighs as many targets per stream. The
utterances here share their words and timings (equal masks and target counts) and differ in their
audio codes (different gradients). Micro-batches of unequal weight get what the trainer
guarantees in general: the mean of their gradients.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dia2.data.teacher import TrainingExample, build_example, collate, tail_frames
from dia2.model.config import FRAME_RATE
from dia2.text.utterance import align_utterance
from finetune.config import LossSection, LoraSection
from finetune.modeling import make_trainable
from finetune.train import accumulate_gradients

MICRO = 3  # micro-batches per step
PER_BATCH = 2  # utterances per micro-batch
TOLERANCE = 1e-4
"""Largest gradient difference allowed, relative to the largest gradient: float32 sums taken in
another order (measured below 1e-6; dropping the 1/k of accumulation is off by a factor k)."""


def shared_words_examples(tts, count: int, words: int = 3) -> list[TrainingExample]:
    """`count` utterances of the same timed words, each with its own random codes."""
    from tests.helpers.corpora import synthetic_words, voice_codes

    spoken = synthetic_words(words, seed=5)
    data = tts.model.config.data
    frames = align_utterance(spoken, tts.tokenizer, tts.ids).alignment.end_of_speech_step + tail_frames(data) + 2
    assert frames / FRAME_RATE > spoken[-1].end
    return [
        build_example(voice_codes(1, frames, tts.model.config.num_codebooks, seed=i, noise=0.5), spoken, tts.tokenizer, tts.ids, data)
        for i in range(count)
    ]


def trainable(tts, full: bool) -> torch.nn.Module:
    """A fresh copy of the tiny model made trainable as the trainer does (LoRA with non-zero
    lora_B, so every LoRA weight gets a gradient, and no dropout; or every weight)."""
    model = copy.deepcopy(tts.model)
    torch.manual_seed(0)
    model = make_trainable(model, LoraSection(rank=4, alpha=8, dropout=0.0, full_finetune=full), "tiny")
    if not full:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.02)
    model.train()
    return model


def largest_difference(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    """max |got - want| over every weight, relative to the largest |want|."""
    assert got.keys() == want.keys() and got
    scale = max(float(w.abs().max()) for w in want.values())
    assert scale > 0
    return max(float((got[k] - want[k]).abs().max()) for k in want) / scale


def _pad_id(tts) -> int:
    return tts.model.config.data.action_pad_token_id


def _batches(tts, examples: list[TrainingExample], size: int) -> list:
    data = tts.model.config.data
    return [collate(examples[i : i + size], data, tts.ids) for i in range(0, len(examples), size)]


@pytest.fixture(scope="module")
def accelerator():
    from accelerate import Accelerator

    return Accelerator()  # as the trainer makes it on one process


@pytest.mark.parametrize("full", [False, True], ids=["lora", "full"])
def test_accumulated_micro_batches_give_the_gradient_of_one_large_batch(tiny_tts, accelerator, full):
    examples = shared_words_examples(tiny_tts, MICRO * PER_BATCH)
    micro, large = _batches(tiny_tts, examples, PER_BATCH), _batches(tiny_tts, examples, len(examples))
    assert len(micro) == MICRO and len(large) == 1
    assert len({float(b.action_mask.sum()) for b in micro}) == 1  # every micro-batch weighs alike
    model = trainable(tiny_tts, full)
    pad = _pad_id(tiny_tts)
    accumulated = _grads(model, micro, pad, accelerator)
    one = _grads(model, large, pad, accelerator)
    alone = [_grads(model, [b], pad, accelerator) for b in micro]
    assert largest_difference(accumulated, one) < TOLERANCE
    # Not a vacuous equality: the micro-batches' own gradients differ from each other.
    assert largest_difference(alone[0], alone[1]) > 100 * TOLERANCE


def test_micro_batches_of_unequal_weight_give_the_mean_of_their_gradients(tiny_tts, accelerator):
    examples = shared_words_examples(tiny_tts, 2) + shared_words_examples(tiny_tts, 1, words=5)
    micro = [collate(examples[:2], tiny_tts.model.config.data, tiny_tts.ids), collate(examples[2:], tiny_tts.model.config.data, tiny_tts.ids)]
    assert float(micro[0].action_mask.sum()) != float(micro[1].action_mask.sum())
    model, pad = trainable(tiny_tts, full=False), _pad_id(tiny_tts)
    accumulated = _grads(model, micro, pad, accelerator)
    alone = [_grads(model, [b], pad, accelerator) for b in micro]
    mean = {k: (alone[0][k] + alone[1][k]) / 2 for k in accumulated}
    assert largest_difference(accumulated, mean) < TOLERANCE


def _grads(model, batches, pad, accelerator) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    accumulate_gradients(model, iter(batches), len(batches), LossSection(), pad, accelerator)
    unwrapped = accelerator.unwrap_model(model)
    return {name: p.grad.detach().clone() for name, p in unwrapped.named_parameters() if p.requires_grad}


def test_two_ddp_processes_accumulating_give_the_gradient_of_one_large_batch(tiny_bundle_dir, tmp_path):
    # Environment note: torchrun runs two real DDP processes over gloo on the CPU.
    from tests.conftest import REPO_ROOT

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
         str(tiny_bundle_dir), str(tmp_path)],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["processes"] == 2
        for kind in ("lora", "full"):
            assert report[kind] < TOLERANCE, (rank, kind, report)
            assert report[f"{kind}_alone"] > 100 * TOLERANCE, (rank, kind, report)  # the processes' batches differ


def ddp_worker(bundle: str, out: Path) -> None:
    """One of two DDP processes: MICRO micro-batches of its own, accumulated; every process's
    gradient must be that of one batch of both processes' utterances, computed here alone."""
    from accelerate import Accelerator

    from dia2 import Dia2

    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    tts = Dia2.from_repo(bundle, device="cpu")
    examples = shared_words_examples(tts, world * MICRO * PER_BATCH)
    micro = _batches(tts, examples, PER_BATCH)
    pad = _pad_id(tts)
    report: dict[str, float] = {"processes": world}
    for kind, full in (("lora", False), ("full", True)):
        model = trainable(tts, full)
        reference = copy.deepcopy(model)
        want = _grads(reference, _batches(tts, examples, len(examples)), pad, accelerator)
        mine_alone = _grads(reference, micro[rank::world], pad, accelerator)
        wrapped = accelerator.prepare(model)
        got = _grads(wrapped, micro[rank::world], pad, accelerator)
        report[kind] = largest_difference(got, want)
        report[f"{kind}_alone"] = largest_difference(mine_alone, want)
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    ddp_worker(sys.argv[1], Path(sys.argv[2]))


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_the_learning_rate_warms_up_then_decays_to_its_floor(schedule):
    import math

    from finetune.config import OptimSection
    from finetune.schedule import lr_factor

    optim = OptimSection(steps=12, warmup_steps=3, schedule=schedule, min_lr_ratio=0.1)
    factors = [lr_factor(step, optim) for step in range(optim.steps)]  # of optimizer steps 1..12
    assert factors[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])  # linear warm-up to the peak
    decay = factors[3:]
    if schedule == "constant":
        assert decay == [1.0] * 9
        return
    # From the peak down to lr x min_lr_ratio at the last step, never rising on the way.
    assert all(a > b for a, b in zip([1.0, *decay], decay)) and decay[-1] == pytest.approx(0.1)
    progress = [(step + 1 - 3) / 9 for step in range(3, 12)]
    shape = [1 - p for p in progress] if schedule == "linear" else [0.5 * (1 + math.cos(math.pi * p)) for p in progress]
    assert decay == pytest.approx([0.1 + 0.9 * s for s in shape])
