"""Sharded training as users launch it: `accelerate launch --config_file configs/accelerate/fsdp-*.yaml`
with two FSDP2 processes over gloo on the CPU. Checkpoints hold whole tensors, so a run resumes
exactly on the same number of processes and continues on another; the adapter and the full model
it writes are the files an unsharded run writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dia2.model.adapters import load_adapter
from dia2.model.network import Dia2Model
from finetune.data import BatchStream, DataPosition, eval_batches, load_training_data
from finetune.outputs import RunPaths, read_metrics
from tests.conftest import REPO_ROOT, random_tokens
from tests.helpers.corpora import synthetic_rows, write_corpus
from tests.helpers.training import PRESET, train

ACCELERATE = Path(sys.executable).parent / "accelerate"
CONFIGS = REPO_ROOT / "configs" / "accelerate"
# No evaluation: the tests are about sharded training, checkpoints and outputs.
SHORT = ["optim.steps=4", "output.save_every=2", "eval.scripts=[]", "eval.every=0", "eval.at_start=false",
         "data.max_frames_per_batch=200", "data.uncond_prob=0.5"]


def launch(config: str, out: Path, bundle: Path, corpus: Path, name: str, *overrides: str) -> subprocess.CompletedProcess:
    """finetune/train.py under `accelerate launch --config_file configs/accelerate/<config>` with
    two CPU processes (the config's GPU count and bf16 overridden for this machine)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    args = [
        ACCELERATE, "launch", "--config_file", CONFIGS / config, "--num_processes", "2", "--mixed_precision", "no",
        "finetune/train.py", "--config", PRESET, f"model.base={bundle}", f"data.corpus={corpus}",
        f"output.dir={out}", f"output.name={name}", *SHORT, *overrides,
    ]
    return subprocess.run(list(map(str, args)), capture_output=True, text=True, cwd=REPO_ROOT, timeout=600, env=env, check=False)


def stopped_after_step_2(paths: RunPaths, name: str) -> RunPaths:
    """A copy of a finished 4-step run as a kill right after its step-2 checkpoint leaves it."""
    copy = RunPaths(paths.root.parent / name)
    shutil.copytree(paths.root, copy.root)
    for later in (copy.checkpoints / "step_000004", copy.adapter, copy.model, copy.loss_png):
        shutil.rmtree(later) if later.is_dir() else later.unlink(missing_ok=True)
    return copy


def train_records(paths: RunPaths) -> list[dict]:
    # frames_per_s is a timing, the only figure that may differ between identical steps.
    return [{k: v for k, v in r.items() if k != "frames_per_s"} for r in read_metrics(paths.metrics) if r["split"] == "train"]


def tensor_layout(file: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    with safe_open(str(file), "pt") as f:
        names = f.keys()  # a safe_open handle is not iterable
        return {k: (tuple(f.get_slice(k).get_shape()), f.get_tensor(k).dtype) for k in names}


def assert_holds_checkpoint_weights(weights_file: Path, checkpoint: Path) -> None:
    """The weights a run wrote (adapter or full model) are the checkpoint's trainable tensors, to
    the bit. PEFT saves adapter tensors without the adapter's name ("default")."""
    saved, trained = load_file(str(weights_file)), load_file(str(checkpoint / "trainable.safetensors"))
    names = {k.replace(".default.", "."): k for k in trained}
    assert names.keys() <= saved.keys()
    assert all(torch.equal(saved[name], trained[k]) for name, k in names.items())


def position(checkpoint: Path) -> tuple[DataPosition, int]:
    """Where a checkpoint stands in the data, and how many processes wrote it."""
    state = json.loads((checkpoint / "state.json").read_text())
    return DataPosition(state["epoch"], state["batch"]), state["world_size"]


def after(tts, corpus: Path, start: DataPosition, world: int, steps: int) -> DataPosition:
    """The data position `steps` steps of `world` processes reach from `start`."""
    data = load_training_data(corpus, tts.tokenizer, tts.ids, tts.model.config.data, tts.codec.fingerprint, 200)
    stream = BatchStream(data.train.lengths, 200, 16, seed=0, world=world, position=start)  # tiny-cpu.yaml's
    for _ in range(steps):
        next(stream)
    return stream.position


@pytest.fixture(scope="module")
def corpus(tiny_tts, tmp_path_factory) -> Path:
    # No validation split: held-out loss is not what these tests are about.
    return write_corpus(tmp_path_factory.mktemp("corpus") / "voice1", tiny_tts, synthetic_rows(tiny_tts, 1, 12, seed=0), [])


def test_fsdp_lora_run_resumes_exactly_and_writes_the_usual_adapter(tiny_bundle_dir, corpus, tmp_path):
    proc = launch("fsdp-lora.yaml", tmp_path, tiny_bundle_dir, corpus, "straight", "lora.dropout=0.2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    straight = RunPaths(tmp_path / "straight")
    training = json.loads((straight.adapter / "voice.json").read_text())["run"]["training"]
    assert training["processes"] == 2 and training["sharded"] is True and training["replicas_in_sync"] is None
    assert position(straight.checkpoints / "step_000002")[1] == 2

    # Killed after the step-2 checkpoint, continued on two processes: the same steps, to the bit.
    resumed = stopped_after_step_2(straight, "resumed")
    proc = launch("fsdp-lora.yaml", tmp_path, tiny_bundle_dir, corpus, "resumed", "lora.dropout=0.2", "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert train_records(resumed) == train_records(straight)
    assert [r["step"] for r in train_records(resumed)] == [1, 2, 3, 4]
    a = tensor_layout(straight.adapter / "adapter_model.safetensors")
    with safe_open(str(straight.adapter / "adapter_model.safetensors"), "pt") as fa, \
            safe_open(str(resumed.adapter / "adapter_model.safetensors"), "pt") as fb:
        assert set(fa.keys()) == set(fb.keys()) and all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in a)

    # The adapter is the PEFT folder an unsharded run writes: same files, keys, shapes, dtypes.
    rc, plain = train(tmp_path, tiny_bundle_dir, corpus, *SHORT, "lora.dropout=0.2", name="one-process")
    assert rc == 0
    assert sorted(p.name for p in straight.adapter.iterdir()) == sorted(p.name for p in plain.adapter.iterdir())
    assert a == tensor_layout(plain.adapter / "adapter_model.safetensors")
    assert json.loads((straight.adapter / "adapter_config.json").read_text()) == \
        json.loads((plain.adapter / "adapter_config.json").read_text())
    # ... and loads through dia2's adapter path, changing the base's outputs.
    base = Dia2Model.from_pretrained(tiny_bundle_dir).eval()
    adapted = load_adapter(Dia2Model.from_pretrained(tiny_bundle_dir), straight.adapter).eval()
    tokens = random_tokens(base.config, 1, 10, seed=1)
    with torch.no_grad():
        assert (base(tokens).cb0_logits - adapted(tokens).cb0_logits).abs().max() > 1e-4


@pytest.mark.slow
def test_fsdp_full_finetune_writes_the_published_model_and_resumes_on_another_process_count(
    tiny_tts, tiny_bundle_dir, corpus, tmp_path
):
    proc = launch("fsdp-full.yaml", tmp_path, tiny_bundle_dir, corpus, "full", "lora.full_finetune=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    full = RunPaths(tmp_path / "full")
    # model/ is a complete model folder in the published layout: every weight of the base, whole.
    assert tensor_layout(full.model / "model.safetensors") == tensor_layout(tiny_bundle_dir / "model.safetensors")
    trained = Dia2Model.from_pretrained(full.model)
    base = Dia2Model.from_pretrained(tiny_bundle_dir)
    assert any(not torch.equal(p, q) for p, q in zip(trained.state_dict().values(), base.state_dict().values()))
    assert (full.model / "voice.json").is_file() and (full.model / "config.json").is_file()

    # 2 -> 1: the sharded checkpoint resumes in one process with its weights: resumed with no step
    # left (optim.steps=2), the run writes the weights it loaded ...
    one = stopped_after_step_2(full, "full-on-one")
    rc, _ = train(tmp_path, tiny_bundle_dir, corpus, *SHORT, "lora.full_finetune=true", "optim.steps=2", "--resume",
                  name="full-on-one")
    assert rc == 0
    assert_holds_checkpoint_weights(one.model / "model.safetensors", one.checkpoints / "step_000002")
    # ... and continued to step 4 (a resume may raise optim.steps), at the same place in the data.
    rc, _ = train(tmp_path, tiny_bundle_dir, corpus, *SHORT, "lora.full_finetune=true", "--resume", name="full-on-one")
    assert rc == 0
    assert position(one.checkpoints / "step_000002") == (after(tiny_tts, corpus, DataPosition(), 2, 2), 2)
    at_2 = position(one.checkpoints / "step_000002")[0]
    assert position(one.checkpoints / "step_000004") == (after(tiny_tts, corpus, at_2, 1, 2), 1)
    assert [r["step"] for r in train_records(one)] == [1, 2, 3, 4]
    # The schedule resumed too: step 3 has the learning rate of step 3, not of a fresh schedule's first step.
    assert train_records(one)[2]["lr"] == train_records(full)[2]["lr"] != train_records(full)[0]["lr"]
    assert tensor_layout(one.model / "model.safetensors") == tensor_layout(full.model / "model.safetensors")


@pytest.mark.slow
def test_one_process_lora_checkpoint_continues_sharded_on_two(tiny_tts, tiny_bundle_dir, corpus, tmp_path):
    rc, single = train(tmp_path, tiny_bundle_dir, corpus, *SHORT, name="single")
    assert rc == 0
    two = stopped_after_step_2(single, "on-two")
    # Resumed with no step left (optim.steps=2), the two processes write the adapter they loaded:
    # the checkpoint's, whole, though each process holds half of it.
    proc = launch("fsdp-lora.yaml", tmp_path, tiny_bundle_dir, corpus, "on-two", "optim.steps=2", "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_holds_checkpoint_weights(two.adapter / "adapter_model.safetensors", two.checkpoints / "step_000002")
    proc = launch("fsdp-lora.yaml", tmp_path, tiny_bundle_dir, corpus, "on-two", "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "was written by 1 process(es), this run has 2" in proc.stderr
    at_2, world = position(two.checkpoints / "step_000002")
    assert world == 1 and at_2 == after(tiny_tts, corpus, DataPosition(), 1, 2)
    assert position(two.checkpoints / "step_000004") == (after(tiny_tts, corpus, at_2, 2, 2), 2)
    assert [r["step"] for r in train_records(two)] == [1, 2, 3, 4]
    assert train_records(two)[2]["lr"] == train_records(single)[2]["lr"] != train_records(single)[0]["lr"]
    assert tensor_layout(two.adapter / "adapter_model.safetensors") == \
        tensor_layout(single.adapter / "adapter_model.safetensors")


@pytest.mark.slow
def test_fsdp_evaluation_matches_one_process_and_keeps_the_best_adapter(tiny_tts, tiny_bundle_dir, tmp_path):
    # Three held-out utterances make one validation batch: the second process has none, and must
    # still join every sharded forward without counting it.
    corpus = write_corpus(tmp_path / "with-validation", tiny_tts, synthetic_rows(tiny_tts, 1, 12, seed=0),
                          synthetic_rows(tiny_tts, 1, 3, seed=7))
    data = load_training_data(corpus, tiny_tts.tokenizer, tiny_tts.ids, tiny_tts.model.config.data, tiny_tts.codec.fingerprint, 200)
    assert len(eval_batches(data.validation, 200, 16, 0, 1)) == 1
    evaluating = ["eval.every=2", "eval.at_start=true", "eval.keep_best=true", "eval.metric=loss"]
    proc = launch("fsdp-lora.yaml", tmp_path, tiny_bundle_dir, corpus, "sharded", *evaluating)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rc, single = train(tmp_path, tiny_bundle_dir, corpus, *SHORT, *evaluating, name="single")
    assert rc == 0
    sharded = RunPaths(tmp_path / "sharded")

    def held_out(paths: RunPaths) -> dict[int, dict]:
        return {r["step"]: r for r in read_metrics(paths.metrics) if r["split"] == "eval"}

    assert sorted(held_out(sharded)) == [0, 2, 4]
    # At step 0 both hold the same weights (LoRA B starts at zero): the same held-out loss.
    assert held_out(sharded)[0]["loss"] == pytest.approx(held_out(single)[0]["loss"], rel=1e-5)
    best = json.loads((sharded.root / "best" / "best.json").read_text())
    assert best["metric"] == "loss" and best["value"] == min(r["loss"] for r in held_out(sharded).values())
    assert tensor_layout(sharded.root / "best" / "adapter_model.safetensors") == \
        tensor_layout(single.root / "best" / "adapter_model.safetensors")
