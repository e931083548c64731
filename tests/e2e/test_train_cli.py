"""The trainer as users launch it: `accelerate launch` with two DDP processes on the CPU, the
script's --help and errors, `dia2-infer --adapter` on the result, and an offline wandb tracker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

from finetune.outputs import RunPaths, read_metrics
from tests.conftest import REPO_ROOT
from tests.helpers.corpora import synthetic_rows, write_corpus
from tests.helpers.training import PRESET, train

ACCELERATE = Path(sys.executable).parent / "accelerate"


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([*map(str, args)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def corpus(tiny_tts, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus") / "voice1"
    return write_corpus(folder, tiny_tts, synthetic_rows(tiny_tts, 1, 12, seed=0), synthetic_rows(tiny_tts, 1, 3, seed=99))


# The same launcher and gloo path runs in the default suite under FSDP (tests/e2e/test_train_fsdp.py).
@pytest.mark.slow
def test_two_process_ddp_run_keeps_replicas_in_sync(tiny_bundle_dir, corpus, tmp_path):
    # Environment note: `--cpu --num_processes 2` runs one process; --multi_gpu runs two over gloo.
    proc = run(
        ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "finetune/train.py", "--config", PRESET, f"model.base={tiny_bundle_dir}",
        f"data.corpus={corpus}", f"output.dir={tmp_path}", "output.name=ddp", "optim.steps=4", "output.save_every=2",
        "eval.every=2", "eval.scripts=[]", "data.max_frames_per_batch=200", "lora.dropout=0.1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Both processes joined one run (rng_rank1.pt below), and each log line is printed once.
    assert proc.stderr.count("on 2 process(es)") == 1
    paths = RunPaths(tmp_path / "ddp")
    assert proc.stderr.count(f"saved checkpoint {paths.checkpoints / 'step_000002'}") == 1
    training = json.loads((paths.adapter / "voice.json").read_text())["run"]["training"]
    assert training["processes"] == 2 and training["replicas_in_sync"] is True
    assert {p.name for p in (paths.checkpoints / "step_000004").iterdir()} >= {"rng_rank0.pt", "rng_rank1.pt"}
    # Each step's figures cover both processes' batches: more real frames than one batch can hold.
    steps = [r for r in read_metrics(paths.metrics) if r["split"] == "train"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and all(r["frames"] > 200 for r in steps)

    # The adapter speaks through dia2-infer.
    out = tmp_path / "speech.wav"
    proc = run(sys.executable, "-m", "dia2.cli", "--hf", tiny_bundle_dir, "--adapter", paths.adapter,
               "--text", "[S1] Hello there.", "--seed", "0", "--max-frames", "30", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data, rate = sf.read(str(out))
    assert rate == 24000 and len(data) > 0


def test_script_help_lists_every_key_with_its_doc():
    proc = run(sys.executable, "finetune/train.py", "--help")
    assert proc.returncode == 0
    assert "accelerate launch finetune/train.py" in proc.stdout
    for key in ("optim.lr (float, default 0.0001)", "data.uncond_prob", "loss.cb0_weight", "output.keep_last", "quant.mode"):
        assert key in proc.stdout
    assert "Peak learning rate (AdamW)." in proc.stdout


def test_offline_wandb_tracker_gets_metrics_and_audio(tiny_bundle_dir, corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    rc, paths = train(tmp_path, tiny_bundle_dir, corpus, "optim.steps=2", "eval.every=2", "eval.max_sample_seconds=4",
                      "output.tracker=wandb")
    assert rc == 0
    run_dir = next((paths.root / "wandb").glob("offline-run-*"))
    # wandb's service process writes the run log; on a busy machine it can still be flushing
    # when finish() has returned (seen once: the file held only its 8-byte header).
    deadline = time.monotonic() + 60
    while True:
        log = next(run_dir.glob("*.wandb")).read_bytes()
        if (b"train/loss_cb0" in log and b"eval/acc_depformer" in log) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert b"train/loss_cb0" in log and b"eval/acc_depformer" in log
    assert len(list((run_dir / "files" / "media" / "audio").rglob("*.wav"))) == 2  # steps 0 and 2
