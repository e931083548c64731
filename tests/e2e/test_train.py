"""finetune/train.py end to end on the tiny model, in-process: the files a run writes, adapters that
reload, learning, exact resume, and the failures a user can cause (NaN, out of memory, kill during
a save, config typos)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

import finetune.checkpoint
import finetune.train
from dia2.generation.tts import Dia2
from dia2.generation.voice import Voice, read_voice
from dia2.model.adapters import AdaptedModel, load_adapter, lora_model
from dia2.model.network import Dia2Model
from dia2.progress import read_progress
from finetune.outputs import RunPaths, read_metrics
from tests.conftest import random_tokens
from tests.helpers.corpora import synthetic_rows, write_corpus
from tests.helpers.training import QUIET, train


def train_losses(paths: RunPaths) -> list[dict]:
    return [r for r in read_metrics(paths.metrics) if r["split"] == "train"]


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


# --- a finished run, and what it wrote ---------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tiny_bundle_dir, corpus, tmp_path_factory) -> RunPaths:
    out = tmp_path_factory.mktemp("runs")
    rc, paths = train(
        out, tiny_bundle_dir, corpus, "optim.steps=4", "output.save_every=2", "eval.every=2", "output.keep_last=1",
        "lora.dropout=0.1", "output.consent=Both speakers agreed in writing.", "--export-merged",
    )
    assert rc == 0
    return paths


def test_a_run_writes_exactly_its_files(finished, tiny_bundle_dir):
    checkpoint = {f"checkpoints/step_000004/{f}" for f in
                  ("optimizer.pt", "rng_rank0.pt", "scheduler.pt", "state.json", "trainable.safetensors")}
    samples = {f"samples/step_00000{s}/sample_0.wav" for s in (0, 2, 4)}
    adapter = {f"adapter/{f}" for f in ("README.md", "adapter_config.json", "adapter_model.safetensors", "voice.json")}
    # merged/ is a complete model folder, laid out like the base (its README aside).
    merged = {f"merged/{f}" for f in files_under(tiny_bundle_dir) - {"README.md"}}
    assert files_under(finished.root) == ({"config.yaml", "metrics.jsonl", "progress.json", "loss.png"}
                                          | checkpoint | samples | adapter | merged)
    progress = read_progress(finished.progress)
    assert (progress.phase, progress.done, progress.total, progress.unit) == ("done", 4, 4, "step"), "the studio reads it"
    records = read_metrics(finished.metrics)
    assert [(r["step"], r["split"]) for r in records] == [
        (0, "eval"), (1, "train"), (2, "train"), (2, "eval"), (3, "train"), (4, "train"), (4, "eval")]
    for key in ("loss", "loss_action", "loss_cb0", "loss_depformer", "acc_action", "acc_cb0", "acc_depformer"):
        assert all(key in r for r in records)
    assert all(r["frames"] > 0 and r["lr"] > 0 and r["grad_norm"] > 0 for r in records if r["split"] == "train")
    # Each step's learning rate as the preset schedules it: lr 3e-3, 2 warm-up steps, then a
    # cosine down to 0.1 x lr at the last step (finetune.train.lr_factor).
    assert [r["lr"] for r in records if r["split"] == "train"] == pytest.approx([3e-3 * f for f in (0.5, 1.0, 0.55, 0.1)])
    assert finished.loss_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_adapter_folder_is_plain_peft_with_a_voice_file_and_card(finished, tiny_bundle_dir):
    config = json.loads((finished.adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == tiny_bundle_dir.name
    assert config["r"] == 8 and config["lora_alpha"] == 16
    record = json.loads((finished.adapter / "voice.json").read_text())
    # The adapter folder is a voice: its voice.json names the folder itself as the adapter.
    assert (record["format"], record["adapter"], record["prefix"]) == ("dia2-voice/2", ".", None)
    assert read_voice(finished.adapter) == Voice(adapter=str(finished.adapter.resolve()), created=record["created"],
                                                 run=record["run"])
    voice = record["run"]
    assert voice["speakers"] == {"S1": ["voice-1"]}
    assert voice["corpus"]["train_utterances"] == 12 and voice["corpus"]["meta"]["asr_model"] == "given"
    training = voice["training"]
    assert training["steps"] == 4 and training["processes"] == 1 and training["eval_start"]["step"] == 0
    assert training["eval_final"]["step"] == 4 and training["parameters"]["trainable"] < training["parameters"]["total"] / 10
    assert voice["samples"] == [{"file": "samples/step_000004/sample_0.wav", "script": "[S1] Hello there, how are you doing today?"}]
    card = (finished.adapter / "README.md").read_text()
    assert "library_name: peft" in card and "Both speakers agreed in writing." in card and "| [S1] | voice-1 |" in card
    assert "| loss |" in card and "12 training utterances" in card
    # The held-out figures before training and after, each in its column.
    before, after = training["eval_start"], training["eval_final"]
    assert f"{before['loss']:.4f}" != f"{after['loss']:.4f}"
    for name in ("loss", "loss_action", "loss_cb0", "loss_depformer", "acc_action", "acc_cb0", "acc_depformer"):
        assert f"| {name} | {before[name]:.4f} | {after[name]:.4f} |" in card, name


def _trained_model(finished: RunPaths, bundle: Path) -> torch.nn.Module:
    """The trained model as training held it: fresh LoRA layers + the last checkpoint's weights."""
    peft_model = lora_model(Dia2Model.from_pretrained(bundle), rank=8, alpha=16)
    trained = load_file(str(finished.checkpoints / "step_000004" / "trainable.safetensors"))
    assert set(trained) == {n for n, p in peft_model.named_parameters() if p.requires_grad}
    peft_model.load_state_dict(trained, strict=False)
    return peft_model.eval()


def _logits(model, tokens) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(tokens)
    return {"action": out.action_logits, "cb0": out.cb0_logits, "depformer": out.depformer_logits}


def _assert_close(a, b, atol):
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


def test_reloaded_adapter_gives_the_trained_logits(finished, tiny_bundle_dir):
    base = Dia2Model.from_pretrained(tiny_bundle_dir).eval()
    tokens = random_tokens(base.config, 2, 12, seed=5)
    trained = _logits(_trained_model(finished, tiny_bundle_dir), tokens)
    plain_peft = PeftModel.from_pretrained(Dia2Model.from_pretrained(tiny_bundle_dir), str(finished.adapter)).eval()
    _assert_close(_logits(plain_peft, tokens), trained, atol=0)
    live = load_adapter(Dia2Model.from_pretrained(tiny_bundle_dir), finished.adapter, merge=False)
    assert isinstance(live, AdaptedModel)
    _assert_close(_logits(live, tokens), trained, atol=0)
    merged = _logits(load_adapter(Dia2Model.from_pretrained(tiny_bundle_dir), finished.adapter), tokens)
    _assert_close(merged, trained, atol=1e-5)  # merged equals unmerged
    # The exported merged/ folder is a base checkpoint with exactly those weights.
    _assert_close(_logits(Dia2Model.from_pretrained(finished.merged), tokens), merged, atol=0)
    base_logits = _logits(base, tokens)
    assert (base_logits["cb0"] - trained["cb0"]).abs().max() > 1e-3, "training changed nothing"


def test_runtime_speaks_with_the_adapter_and_the_merged_model(finished, tiny_bundle_dir):
    from dia2.generation.config import GenerationConfig

    config = GenerationConfig(seed=0, max_frames=20)
    with_adapter = Dia2.from_repo(tiny_bundle_dir, device="cpu", adapter=finished.adapter).generate("[S1] Hello.", config)
    merged = Dia2.from_repo(finished.merged, device="cpu").generate("[S1] Hello.", config)
    assert torch.equal(with_adapter.audio_tokens, merged.audio_tokens) and with_adapter.audio_tokens.shape[1] > 0


# --- learning ----------------------------------------------------------------------------------


def test_overfitting_a_tiny_corpus_halves_the_loss(tiny_tts, tiny_bundle_dir, tmp_path):
    corpus = write_corpus(tmp_path / "c", tiny_tts, synthetic_rows(tiny_tts, 2, 4, seed=3), [])
    rc, paths = train(tmp_path, tiny_bundle_dir, corpus, *QUIET, "optim.steps=40", "lora.full_finetune=true",
                      "output.save_every=0")
    assert rc == 0
    losses = [r["loss"] for r in train_losses(paths)]
    assert losses[-1] < 0.5 * losses[0], losses
    # Full fine-tuning writes a complete model folder instead of an adapter.
    assert (paths.model / "model.safetensors").is_file() and (paths.model / "voice.json").is_file()
    assert not paths.adapter.exists()


def test_lora_adapts_a_base_trained_on_another_voice(tiny_tts, tiny_bundle_dir, tmp_path):
    """Base: the tiny model trained briefly (all weights) on voice A. LoRA on voice B then lowers
    the held-out loss on voice B."""
    voice_a = write_corpus(tmp_path / "a", tiny_tts, synthetic_rows(tiny_tts, 3, 8, seed=1), [])
    rc, base_a = train(tmp_path, tiny_bundle_dir, voice_a, *QUIET, "optim.steps=30", "lora.full_finetune=true",
                       "output.save_every=0", name="voice-a")
    assert rc == 0
    voice_b = write_corpus(tmp_path / "b", tiny_tts, synthetic_rows(tiny_tts, 4, 8, seed=2), synthetic_rows(tiny_tts, 4, 3, seed=4))
    rc, adapted = train(tmp_path, base_a.model, voice_b, "eval.scripts=[]", "eval.every=0", "optim.steps=30",
                        "optim.lr=1e-2", "output.save_every=0", name="voice-b")
    assert rc == 0
    held = [r for r in read_metrics(adapted.metrics) if r["split"] == "eval"]
    assert [r["step"] for r in held] == [0, 30]
    before, after = held[0]["loss"], held[-1]["loss"]
    assert after < 0.8 * before, (before, after)
    assert held[-1]["loss_cb0"] < held[0]["loss_cb0"] and held[-1]["loss_depformer"] < held[0]["loss_depformer"]


# --- exact resume ------------------------------------------------------------------------------

RESUMABLE = ["optim.steps=6", "output.save_every=3", "eval.every=3", "lora.dropout=0.2", "data.uncond_prob=0.5",
             "data.max_frames_per_batch=120", "optim.grad_accumulation=2"]


class Killed(BaseException):
    """Stands for the process being killed (not an Exception: nothing may catch it)."""


def test_resume_continues_exactly(tiny_bundle_dir, corpus, tmp_path, monkeypatch):
    rc, straight = train(tmp_path, tiny_bundle_dir, corpus, *RESUMABLE, name="straight")
    assert rc == 0

    real_save = finetune.train.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise Killed

    monkeypatch.setattr(finetune.train, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train(tmp_path, tiny_bundle_dir, corpus, *RESUMABLE, name="resumed")
    monkeypatch.undo()
    rc, resumed = train(tmp_path, tiny_bundle_dir, corpus, *RESUMABLE, "--resume", name="resumed")
    assert rc == 0

    a, b = train_losses(straight), train_losses(resumed)
    assert [r["step"] for r in b] == list(range(1, 7))
    # Several batches per step over several epochs, LoRA dropout and unconditional dropout all on.
    for key in ("loss", "loss_action", "loss_cb0", "loss_depformer", "acc_cb0", "lr", "grad_norm", "frames"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    wa = load_file(str(straight.adapter / "adapter_model.safetensors"))
    wb = load_file(str(resumed.adapter / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # The resumed run did not repeat the step-0 evaluation, and its held-out figures match.
    assert [r for r in read_metrics(resumed.metrics) if r["split"] == "eval"][-1] == \
        [r for r in read_metrics(straight.metrics) if r["split"] == "eval"][-1]


def test_a_kill_during_a_save_leaves_the_previous_checkpoint(tiny_bundle_dir, corpus, tmp_path, monkeypatch):
    real_save = torch.save
    saves = []

    def dying_save(obj, path, *args, **kwargs):
        saves.append(Path(path).name)
        if saves.count("optimizer.pt") == 2:  # the second checkpoint, half written
            raise Killed
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(finetune.checkpoint.torch, "save", dying_save)
    with pytest.raises(Killed):
        train(tmp_path, tiny_bundle_dir, corpus, *QUIET, "optim.steps=4", "output.save_every=2")
    monkeypatch.undo()
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [".partial-step_000004", "step_000002"]
    rc, paths = train(tmp_path, tiny_bundle_dir, corpus, *QUIET, "optim.steps=4", "output.save_every=2", "--resume")
    assert rc == 0
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_000002", "step_000004"]
    assert [r["step"] for r in train_losses(paths)] == [1, 2, 3, 4]


# --- failures a user can cause -----------------------------------------------------------------


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_bundle_dir, corpus, tmp_path, monkeypatch, capsys):
    real_loss = finetune.train.training_loss
    calls = []

    def nan_at_step_3(*args, **kwargs):
        result = real_loss(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            result.loss = result.loss * float("nan")
        return result

    monkeypatch.setattr(finetune.train, "training_loss", nan_at_step_3)
    rc, paths = train(tmp_path, tiny_bundle_dir, corpus, *QUIET, "optim.steps=6", "output.save_every=2")
    assert rc == 1
    error = capsys.readouterr().err
    assert "the loss is not finite at step 3: stopped without saving" in error
    assert f"the last good checkpoint is {paths.checkpoints / 'step_000002'}" in error
    assert [p.name for p in paths.checkpoints.iterdir()] == ["step_000002"] and not paths.adapter.exists()
    assert [r["step"] for r in train_losses(paths)] == [1, 2]
    monkeypatch.undo()
    rc, paths = train(tmp_path, tiny_bundle_dir, corpus, *QUIET, "optim.steps=6", "output.save_every=2", "--resume")
    assert rc == 0 and [r["step"] for r in train_losses(paths)] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")])
def test_out_of_memory_names_batch_size_and_checkpointing(tiny_bundle_dir, corpus, tmp_path, monkeypatch, capsys, error):
    def out_of_memory(*args, **kwargs):
        raise error

    monkeypatch.setattr(finetune.train, "training_loss", out_of_memory)
    rc, _ = train(tmp_path, tiny_bundle_dir, corpus, *QUIET, "optim.steps=2", "data.max_frames_per_batch=300")
    assert rc == 1
    message = capsys.readouterr().err
    assert "out of memory with batches of data.max_frames_per_batch=300 grid columns" in message
    assert "gradient checkpointing off" in message and "optim.gradient_checkpointing=true" in message


def test_other_runtime_errors_are_not_disguised(tiny_bundle_dir, corpus, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(finetune.train, "training_loss", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        train(tmp_path, tiny_bundle_dir, corpus, *QUIET, "optim.steps=1")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.lrr=1"], "unknown config key 'optim.lrr' (did you mean 'optim.lr'?); valid keys of optim: steps, lr,"),
        (["lora.target_modules=[nothing_here]"], "lora.target_modules=('nothing_here',) selects no layer"),
        (["eval.scripts=[S3] who?"], "eval.scripts[0] cannot be spoken"),
        (["eval.max_sample_seconds=0.5"], "eval.scripts[0] does not fit eval.max_sample_seconds=0.5"),
        (["output.tracker=tensorboard"], None),
    ],
)
def test_bad_config_is_reported_without_a_traceback(tiny_bundle_dir, corpus, tmp_path, capsys, overrides, message):
    import importlib.util

    if message is None:
        if importlib.util.find_spec("tensorboard") is not None:
            pytest.skip("tensorboard is installed here")
        message = "output.tracker=tensorboard needs the tensorboard package"
    rc, _ = train(tmp_path, tiny_bundle_dir, corpus, *overrides)
    assert rc == 1 and message in capsys.readouterr().err


def test_corpus_for_another_model_and_fresh_run_over_an_old_one(tiny_tts, tiny_bundle_dir, corpus, tmp_path, capsys):
    other = write_corpus(tmp_path / "other", tiny_tts, synthetic_rows(tiny_tts, 1, 2, 0), [], codec_fingerprint="mimi-xyz")
    rc, _ = train(tmp_path, tiny_bundle_dir, other, *QUIET)
    assert rc == 1 and "was built with codec tiny-mimi (mimi-xyz)" in capsys.readouterr().err
    empty = write_corpus(tmp_path / "empty", tiny_tts, [], [])
    rc, _ = train(tmp_path, tiny_bundle_dir, empty, *QUIET)
    assert rc == 1 and "has no usable training utterances" in capsys.readouterr().err
    assert train(tmp_path, tiny_bundle_dir, corpus, *QUIET, "optim.steps=1")[0] == 0
    rc, _ = train(tmp_path, tiny_bundle_dir, corpus, *QUIET, "optim.steps=1")
    assert rc == 1 and "already holds a run: continue it with output.resume=auto" in capsys.readouterr().err
    rc, _ = train(tmp_path, tiny_bundle_dir, corpus, *QUIET, "optim.steps=2", "optim.lr=0.5", "--resume")
    assert rc == 1 and "cannot resume with a changed config (optim.lr: 0.003 -> 0.5)" in capsys.readouterr().err


def test_qlora_steps_run_on_cpu(tiny_bundle_dir, corpus, tmp_path):
    rc, paths = train(tmp_path, tiny_bundle_dir, corpus, *QUIET, "quant.mode=4bit", "optim.steps=3",
                      "optim.gradient_checkpointing=true", "--export-merged")
    assert rc == 0
    losses = train_losses(paths)
    assert len(losses) == 3 and all(r["loss"] == r["loss"] for r in losses)
    weights = load_file(str(paths.adapter / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in weights.items())
    voice = json.loads((paths.adapter / "voice.json").read_text())["run"]
    assert voice["training"]["quantization"] == "4bit"
    # The merged export folds the adapter into the float base, not the 4-bit one.
    merged = Dia2Model.from_pretrained(paths.merged)
    assert merged.transformer.layers[0].attn.q_proj.weight.dtype == torch.float32


# --- publishing --------------------------------------------------------------------------------


def test_push_dry_run_lists_the_upload_with_a_card_for_the_repo(finished, capsys):
    from finetune.push import main as push_main
    from finetune.push import push_run

    assert push_main([str(finished.root), "--repo", "me/my-voice", "--dry-run"]) == 0
    listing = json.JSONDecoder().raw_decode(capsys.readouterr().out)[0]  # the card's text follows
    assert listing["dry_run"] is True
    assert [f["path_in_repo"] for f in listing["would upload"]] == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "voice.json", "samples/sample_0.wav", "loss.png"]
    card = push_run(finished.root, "me/my-voice", dry_run=True)[0].source.decode()
    assert "# my-voice" in card and "--adapter me/my-voice" in card and "[samples/sample_0.wav](samples/sample_0.wav)" in card


def test_push_uploads_one_commit_with_the_stored_token(finished, monkeypatch):
    import huggingface_hub

    from finetune.push import push_run

    calls = {}

    class FakeApi:
        def __init__(self, token):
            calls["token"] = token

        def create_repo(self, repo, private, exist_ok, repo_type):
            calls["repo"] = (repo, private, exist_ok, repo_type)

        def create_commit(self, repo, operations, commit_message):
            calls["files"] = [(op.path_in_repo, op.path_or_fileobj) for op in operations]

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    plan = push_run(finished.root, "me/my-voice", private=True)
    assert calls["token"] == "hf_test_token" and calls["repo"] == ("me/my-voice", True, True, "model")
    generated = {"README.md", "voice.json"}
    assert calls["files"] == [(u.path_in_repo, u.source if u.path_in_repo in generated else str(u.source)) for u in plan]
    assert all(Path(source).is_file() for remote, source in calls["files"] if remote not in generated)


def test_push_requires_a_consent_statement(finished, tmp_path):
    import shutil

    from finetune.push import PushError, push_run

    run = tmp_path / "copy"
    shutil.copytree(finished.root, run)
    record = json.loads((run / "adapter" / "voice.json").read_text())
    (run / "adapter" / "voice.json").write_text(json.dumps({**record, "run": {**record["run"], "consent": ""}}))
    with pytest.raises(PushError, match="no consent statement"):
        push_run(run, "me/my-voice", dry_run=True)
    plan = {u.path_in_repo: u.source for u in push_run(run, "me/my-voice", dry_run=True, consent="Recorded with written consent.")}
    assert "Recorded with written consent." in plan["README.md"].decode()
    assert json.loads(plan["voice.json"])["run"]["consent"] == "Recorded with written consent."
