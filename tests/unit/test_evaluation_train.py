"""The trainer's evaluation with dia2-eval's scorer: scored samples, and keep-best (best/ holds the
adapter of the evaluation that scored best on eval.metric, with best.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

from dia2.evaluation.cli import main as eval_main
from dia2.evaluation.scoring import ClipScorer
from dia2.model.adapters import DEFAULT_TARGET_MODULES, load_adapter
from dia2.model.network import Dia2Model
from finetune.checkpoint import checkpoint_name
from finetune.config import EvalSection, TrainConfigError
from finetune.evaluation import keep_best
from finetune.outputs import RunPaths, read_metrics
from finetune.train import main
from tests.conftest import REPO_ROOT
from tests.helpers.corpora import synthetic_rows, write_corpus

PRESET = str(REPO_ROOT / "configs" / "train" / "tiny-cpu.yaml")
ALICE = REPO_ROOT / "tests" / "fixtures" / "prep" / "alice"


@pytest.fixture(scope="module")
def corpus(tiny_tts, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus") / "voice1"
    return write_corpus(folder, tiny_tts, synthetic_rows(tiny_tts, 1, 8, seed=0), synthetic_rows(tiny_tts, 1, 2, seed=99))


def train(out: Path, bundle: Path, corpus: Path, *overrides: str) -> tuple[int, RunPaths]:
    args = ["--config", PRESET, f"model.base={bundle}", f"data.corpus={corpus}", f"output.dir={out}", "output.name=run"]
    return main([*args, "optim.steps=2", "eval.every=1", "output.save_every=0", *overrides]), RunPaths(out / "run")


def _lora(tiny_config, trained: bool = True) -> torch.nn.Module:
    """A LoRA model: as PEFT makes it (lora_B zero: it changes nothing), or as if trained."""
    torch.manual_seed(0)
    model = get_peft_model(Dia2Model.from_config(tiny_config), LoraConfig(r=2, lora_alpha=4, target_modules=DEFAULT_TARGET_MODULES))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name and trained:
                param.normal_(0.0, 0.1)
    return model


def test_keep_best_never_keeps_an_adapter_that_changes_nothing(tiny_config, tmp_path):
    best = tmp_path / "best"
    assert not keep_best(_lora(tiny_config, trained=False), best, 0, "loss", {"loss": 5.0})
    assert not best.exists()
    assert keep_best(_lora(tiny_config), best, 1, "loss", {"loss": 6.0})  # worse, but it is an adapter
    assert json.loads((best / "best.json").read_text())["step"] == 1


def test_keep_best_replaces_best_only_on_improvement(tiny_config, tmp_path):
    model, best = _lora(tiny_config), tmp_path / "best"
    record = lambda: json.loads((best / "best.json").read_text())
    assert keep_best(model, best, 1, "wer", {"wer": 0.5, "similarity": 0.7})
    assert not keep_best(model, best, 2, "wer", {"wer": 0.6})
    assert record()["step"] == 1
    assert keep_best(model, best, 3, "wer", {"wer": 0.4})
    assert record() == {"step": 3, "metric": "wer", "value": 0.4, "scores": {"wer": 0.4}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no partial or old copies left
    assert {"adapter_config.json", "adapter_model.safetensors", "best.json"} <= {p.name for p in best.iterdir()}
    # A record from a later step than now belongs to an earlier attempt: replaced even if better.
    assert keep_best(model, best, 0, "wer", {"wer": 0.9}) and record()["step"] == 0
    # No value to rank (no validation split, no speech in the samples): not better, best/ stays.
    assert not keep_best(model, best, 5, "wer", {"wer": None, "loss": 0.1}) and record()["step"] == 0
    with pytest.raises(TrainConfigError, match="full fine-tune"):
        keep_best(Dia2Model.from_config(tiny_config), best, 6, "wer", {"wer": 0.1})


def test_similarity_ranks_higher_as_better(tiny_config, tmp_path):
    model, best = _lora(tiny_config), tmp_path / "best"
    assert keep_best(model, best, 1, "similarity", {"similarity": 0.5})
    assert not keep_best(model, best, 2, "similarity", {"similarity": 0.4})
    assert keep_best(model, best, 3, "similarity", {"similarity": 0.6})


@pytest.mark.parametrize("overrides,message", [
    (["eval.keep_best=true", "eval.metric=wer"], "eval.keep_best by eval.metric=wer needs eval.asr_model"),
    (["eval.keep_best=true", "eval.metric=similarity"], "needs eval.references"),
    (["eval.metric=mos"], "'eval.metric' must be one of loss|wer|cer|similarity"),
])
def test_bad_eval_settings_are_refused(overrides, message):
    from finetune.config_file import load_config

    with pytest.raises(TrainConfigError, match=message.replace("|", r"\|")):
        load_config(Path(PRESET), ["data.corpus=x", *overrides])
    assert EvalSection(keep_best=True).metric == "loss"


def test_training_scores_samples_and_keeps_the_best_adapter(tiny_bundle_dir, tiny_config, corpus, tmp_path):
    pytest.importorskip("resemblyzer")
    rc, paths = train(
        tmp_path, tiny_bundle_dir, corpus, f"eval.references={ALICE}", "eval.keep_best=true", "eval.metric=similarity",
    )
    assert rc == 0
    similarity = {}
    for step in range(3):
        scores = json.loads((paths.samples / checkpoint_name(step) / "scores.json").read_text())
        assert scores["clips"][0]["file"] == "sample_0.wav" and scores["clips"][0]["wer"] is None
        similarity[step] = scores["aggregate"]["similarity"]
    best = json.loads((paths.root / "best" / "best.json").read_text())
    # The first of equals (only improvements replace); never the untrained step 0, which changes nothing.
    top = max((1, 2), key=lambda s: (similarity[s], -s))
    assert best["step"] == top and best["value"] == similarity[top] and best["metric"] == "similarity"
    held = {r["step"]: r["loss"] for r in read_metrics(paths.metrics) if r["split"] == "eval"}
    assert best["scores"]["loss"] == held[top]
    # best/ is a plain PEFT adapter: it loads onto the base, and is the final adapter only if the last step won.
    load_adapter(Dia2Model.from_config(tiny_config), paths.root / "best")
    same = _same_tensors(paths.root / "best", paths.adapter)
    assert same == (top == 2)

    # dia2-eval's adapter-effect check passes on the adapter this run trained (a zero one fails it:
    # tests/e2e/test_eval_cli.py), and the adapter is accepted as made for this base.
    report, prompts = tmp_path / "eval", tmp_path / "prompts.txt"
    prompts.write_text("Hello there.\n")
    argv = ["--model", str(tiny_bundle_dir), "--prompts", str(prompts), "--adapter", str(paths.adapter), "--references", str(ALICE),
            "--asr-model", "none", "--speaker-encoder", "none", "--no-toplines", "--seeds", "0",
            "--max-frames", "30", str(report)]
    assert eval_main(argv) == 0
    effect = json.loads((report / "eval.json").read_text())["adapter_effect"]
    assert effect and all(e["passed"] for e in effect)


def _same_tensors(a: Path, b: Path) -> bool:
    x, y = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_keep_best_by_loss_without_validation_split_is_refused_before_the_run_folder(
    tiny_tts, tiny_bundle_dir, tmp_path, capsys
):
    no_validation = write_corpus(tmp_path / "no-validation", tiny_tts, synthetic_rows(tiny_tts, 1, 4, seed=0), [])
    rc, paths = train(tmp_path, tiny_bundle_dir, no_validation, "eval.keep_best=true")  # eval.metric=loss: the default
    assert rc == 1
    assert "eval.keep_best by eval.metric=loss needs a validation split, and data.corpus has none" in capsys.readouterr().err
    assert not paths.root.exists()


def test_unloadable_asr_model_is_refused_before_the_run_folder(tiny_bundle_dir, corpus, tmp_path, capsys):
    missing = tmp_path / "no-such-whisper"
    rc, paths = train(tmp_path, tiny_bundle_dir, corpus, f"eval.asr_model={missing}")
    assert rc == 1
    err = capsys.readouterr().err
    assert f"cannot load the Whisper model '{missing}'" in err and "pass eval.asr_model with" in err
    assert not paths.root.exists()


def test_a_missing_score_keeps_training_and_writes_no_best(tiny_bundle_dir, corpus, tmp_path, monkeypatch, caplog):
    pytest.importorskip("resemblyzer")
    # As when the samples hold no speech yet: the speaker encoder finds no voice to compare.
    monkeypatch.setattr(ClipScorer, "similarity", lambda self, *args, **kwargs: None)
    rc, paths = train(
        tmp_path, tiny_bundle_dir, corpus, "optim.steps=1", f"eval.references={ALICE}", "eval.keep_best=true",
        "eval.metric=similarity",
    )
    assert rc == 0 and (paths.adapter / "adapter_model.safetensors").is_file()
    for step in (0, 1):
        scores = json.loads((paths.samples / checkpoint_name(step) / "scores.json").read_text())
        assert scores["aggregate"]["similarity"] is None
    assert not (paths.root / "best").exists()
    assert "eval.metric=similarity has no value at step 1: best/ is left as it is" in caplog.text


@pytest.mark.parametrize("scripts", ["eval.scripts=[]", None], ids=["no-scripts", "scripts"])
def test_a_missing_reference_folder_is_refused_before_the_run_folder(tiny_bundle_dir, corpus, tmp_path, capsys, scripts):
    rc, paths = train(tmp_path, tiny_bundle_dir, corpus, f"eval.references={tmp_path / 'nowhere'}", *[s for s in [scripts] if s])
    assert rc == 1
    assert f"reference folder {tmp_path / 'nowhere'} not found" in capsys.readouterr().err
    assert not paths.root.exists()


def _without_dropout(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of `module` with every dropout replaced by the identity (still in training mode)."""
    import copy

    clone = copy.deepcopy(module)
    for child in list(clone.modules()):
        for key, sub in list(child.named_children()):
            if isinstance(sub, torch.nn.Dropout):
                setattr(child, key, torch.nn.Identity())
    return clone


def test_evaluation_runs_without_dropout_and_gives_training_mode_back(tiny_tts, corpus, tmp_path):
    import copy

    from accelerate import Accelerator

    from dia2 import Dia2
    from finetune.config_file import load_config
    from finetune.data import load_training_data
    from finetune.evaluation import held_out_loss, speak_samples
    from finetune.modeling import make_trainable

    # A high LoRA dropout (the default is 0.05) and non-zero lora_B, so dropout would change every figure.
    cfg = load_config(Path(PRESET), [f"data.corpus={corpus}", "lora.dropout=0.5"])
    tts = Dia2(copy.deepcopy(tiny_tts.model), tiny_tts.tokenizer, tiny_tts.codec)
    torch.manual_seed(0)
    model = make_trainable(tts.model, cfg.lora, "tiny")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in model.modules())
    model.train()
    data = load_training_data(corpus, tts.tokenizer, tts.ids, tts.model.config.data, tts.codec.fingerprint, 10_000)
    accelerator = Accelerator()  # as the trainer makes it on one process

    def in_training_mode() -> bool:
        return all(m.training for m in model.modules())

    reference = _without_dropout(model)
    reference_tts = Dia2(reference.base_model.model, tts.tokenizer, tts.codec)
    assert in_training_mode()

    # Held-out loss: deterministic, equal to the model without dropout, training mode after.
    losses = [held_out_loss(model, data, tts, cfg, accelerator) for _ in range(2)]
    assert in_training_mode()
    expected = held_out_loss(reference, data, reference_tts, cfg, accelerator)
    assert losses[0] == losses[1] == pytest.approx(expected, rel=1e-6, abs=1e-7)

    # Spoken samples: the same, token for token.
    scripts = ["[S1] Hello there."]
    spoken = [speak_samples(tts, scripts, 0, 3.0, tmp_path / f"s{i}")[0][1].audio_tokens for i in range(2)]
    assert in_training_mode()
    reference.train()
    alone = speak_samples(reference_tts, scripts, 0, 3.0, tmp_path / "reference")[0][1].audio_tokens
    assert torch.equal(spoken[0], spoken[1]) and torch.equal(spoken[0], alone)
