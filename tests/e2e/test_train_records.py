"""A run's records describe the whole run (issue 15): resume, export and push leave them right,
a failed start leaves nothing, an interrupted run says how to continue, and the card's usage
lines work for an adapter of the embedded tiny model."""

from __future__ import annotations

import json
import os
import shlex
import signal
from pathlib import Path

import pytest
import torch
import yaml

import finetune.train
from dia2.generation.config import GenerationConfig
from dia2.generation.tts import Dia2
from dia2.tiny import BUNDLE_VERSION
from finetune.outputs import RunPaths, read_metrics
from finetune.push import push_run
from finetune.train import main
from tests.helpers.training import PRESET, QUIET, train


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def embedded_tiny(tiny_bundle_dir, tmp_path_factory):
    """`tiny` resolves to the session's tiny bundle (a cache holding it), without rebuilding it."""
    cache = tmp_path_factory.mktemp("dia2-cache")
    (cache / f"tiny-v{BUNDLE_VERSION}-seed0").symlink_to(tiny_bundle_dir, target_is_directory=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DIA2_CACHE", str(cache))
        yield "tiny"


@pytest.fixture(scope="module")
def tiny_run(embedded_tiny, corpus, tmp_path_factory) -> RunPaths:
    """A finished 4-step LoRA run on `model.base=tiny`, with a consent statement."""
    out = tmp_path_factory.mktemp("runs")
    rc, paths = train(out, embedded_tiny, corpus, *QUIET, "optim.steps=4", "output.save_every=2",
                      "output.consent=A agreed.")
    assert rc == 0
    return paths


# --- bug 3: one spelling of the embedded model everywhere ----------------------------------------


def test_the_cards_usage_lines_work_for_an_adapter_of_the_tiny_model(tiny_run, tiny_bundle_dir, tmp_path):
    from dia2.cli import main as infer_main

    voice = json.loads((tiny_run.adapter / "voice.json").read_text())["run"]
    config = json.loads((tiny_run.adapter / "adapter_config.json").read_text())
    assert voice["base_model"] == "tiny" and config["base_model_name_or_path"] == "tiny"
    card = (tiny_run.adapter / "README.md").read_text().replace("path/to/adapter", str(tiny_run.adapter))
    shell = next(line for line in card.splitlines() if line.startswith("dia2-infer "))
    args = shlex.split(shell)[1:]
    args[-1] = str(tmp_path / "out.wav")
    assert infer_main([*args, "--seed", "0", "--max-frames", "20"]) == 0
    assert (tmp_path / "out.wav").stat().st_size > 44
    python = next(line for line in card.splitlines() if line.startswith("tts = Dia2.from_repo("))
    tts = eval(python.removeprefix("tts = "), {"Dia2": Dia2})
    config = GenerationConfig(seed=0, max_frames=20)
    by_path = Dia2.from_repo(tiny_bundle_dir, adapter=tiny_run.adapter).generate("[S1] Hello there.", config)
    assert torch.equal(tts.generate("[S1] Hello there.", config).audio_tokens, by_path.audio_tokens)


def test_a_finished_runs_adapter_folder_is_a_voice_dia2_infer_speaks_with(tiny_run, tmp_path):
    """A trained run yields a voice (issue 25): `dia2-infer --voice runs/NAME/adapter` applies the
    run's adapter, as --adapter does, and its voice.json holds the run's record."""
    from dia2.cli import main as infer_main
    from dia2.generation.voice import read_voice

    voice = read_voice(tiny_run.adapter)
    assert voice.adapter == str(tiny_run.adapter.resolve()) and voice.prefix is None
    assert voice.run["base_model"] == "tiny" and voice.run["consent"] == "A agreed."
    takes = {}
    for name, flags in (("voice", ["--voice", tiny_run.adapter]), ("adapter", ["--adapter", tiny_run.adapter]), ("base", [])):
        out = tmp_path / f"{name}.wav"
        assert infer_main(["--model", "tiny", "--text", "[S1] Hello there.", "--seed", "0", "--max-frames", "20",
                           *map(str, flags), str(out)]) == 0
        takes[name] = out.read_bytes()
    assert takes["voice"] == takes["adapter"] != takes["base"]


def test_records_name_the_base_and_hold_no_path_of_this_machine(tiny_run, tiny_bundle_dir):
    for name in ("README.md", "voice.json", "adapter_config.json"):
        text = (tiny_run.adapter / name).read_text()
        assert str(tiny_bundle_dir) not in text and str(tiny_run.root.parent) not in text, name


# --- bug 2: a push never rewrites the run --------------------------------------------------------


def test_a_dry_run_or_failed_push_changes_nothing_in_the_run(tiny_run, monkeypatch, capsys):
    from finetune.push import PushError
    from finetune.push import main as push_main

    before = snapshot(tiny_run.root)
    assert push_main([str(tiny_run.root), "--repo", "someone/else", "--consent", "B", "--dry-run"]) == 0
    assert snapshot(tiny_run.root) == before
    listing = json.JSONDecoder().raw_decode(capsys.readouterr().out)[0]["would upload"]
    assert {f["path_in_repo"]: f["file"] for f in listing}["README.md"] == "(generated for this push)"
    # The upload carries the card and consent of this push; the run keeps those of its training.
    plan = {u.path_in_repo: u.source for u in push_run(tiny_run.root, "someone/else", dry_run=True, consent="B")}
    assert "# else" in plan["README.md"].decode() and json.loads(plan["voice.json"])["run"]["consent"] == "B"
    assert json.loads((tiny_run.adapter / "voice.json").read_text())["run"]["consent"] == "A agreed."
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(PushError, match="no Hugging Face token"):
        push_run(tiny_run.root, "someone/else", consent="B")
    assert snapshot(tiny_run.root) == before


# --- bug 5: resuming keeps the records of the whole run ------------------------------------------


def test_resume_and_export_keep_the_runs_seconds_and_config(tiny_run, embedded_tiny, corpus, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run.root, run)
    seconds = json.loads((tiny_run.adapter / "voice.json").read_text())["run"]["training"]["seconds"]
    config_before = (run / "config.yaml").read_bytes()
    assert seconds > 0
    saved = yaml.safe_load(config_before)["output"]
    assert (saved["resume"], saved["export_merged"], saved["push_to_hub"]) == ("none", False, None)
    rc, paths = train(tmp_path, embedded_tiny, corpus, *QUIET, "optim.steps=4", "output.save_every=2",
                      "output.consent=A agreed.", "--resume", "--export-merged")
    assert rc == 0 and (paths.merged / "model.safetensors").is_file()
    # No step was left to train: the record still counts the first invocation's seconds as of its
    # last checkpoint. Not the first record's seconds: those also count the checkpoint's save
    # (0.15-0.2 s here, growing with the machine's load: a bound on it was timing-sensitive). The
    # invocation itself adds only the few lines between loading the checkpoint and the record.
    checkpointed = json.loads((run / "checkpoints" / "step_000004" / "state.json").read_text())["seconds"]
    assert 0 < checkpointed <= seconds + 0.05  # the record is rounded to 0.1 s
    resumed = json.loads((paths.adapter / "voice.json").read_text())["run"]["training"]["seconds"]
    assert resumed == pytest.approx(checkpointed, abs=0.5)
    after = yaml.safe_load((paths.root / "config.yaml").read_text())
    assert after == {**yaml.safe_load(config_before), "output": {**saved, "dir": str(tmp_path)}}
    # Two more steps: the seconds grow from the recorded total, not from zero.
    rc, paths = train(tmp_path, embedded_tiny, corpus, *QUIET, "optim.steps=6", "output.save_every=2",
                      "output.consent=A agreed.", "--resume")
    assert rc == 0
    longer = json.loads((paths.adapter / "voice.json").read_text())["run"]["training"]
    assert longer["steps"] == 6 and longer["seconds"] > checkpointed  # two steps take well over the 0.05 s of rounding
    assert yaml.safe_load((paths.root / "config.yaml").read_text())["optim"]["steps"] == 6


# --- a failed start leaves nothing; an interrupted run says how to continue ----------------------


def test_a_missing_corpus_is_refused_before_the_base_loads_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(finetune.train, "load_base", lambda *a, **k: pytest.fail("the base was loaded"))
    rc = main(["--config", PRESET, f"data.corpus={tmp_path / 'corpora' / 'nope'}", f"output.dir={tmp_path / 'runs'}",
               "output.name=x"])
    assert rc == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_failed_load_leaves_no_run_folder(corpus, tmp_path, capsys):
    rc = main(["--config", PRESET, f"model.base={tmp_path / 'no-model'}", f"data.corpus={corpus}",
               f"output.dir={tmp_path / 'runs'}", "output.name=x"])
    assert rc == 1 and "no-model" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("how", "code", "said"), [("ctrl-c", 130, "Ctrl-C"), ("sigterm", 143, "SIGTERM")])
def test_an_interrupted_run_names_its_checkpoint_and_the_resume_command(
    how, code, said, embedded_tiny, corpus, tmp_path, monkeypatch, capsys
):
    real_save = finetune.train.save_checkpoint

    def save_then_stop(*args, **kwargs):
        real_save(*args, **kwargs)
        if how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune.train, "save_checkpoint", save_then_stop)
    argv = ["--config", PRESET, f"model.base={embedded_tiny}", f"data.corpus={corpus}", f"output.dir={tmp_path}",
            "output.name=run", *QUIET, "optim.steps=4", "output.save_every=2"]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = next(line for line in err.splitlines() if line.startswith("train: stopped by"))
    assert said in line and str(tmp_path / "run" / "checkpoints" / "step_000002") in line
    command = shlex.split(line.split("continue with: ", 1)[1])
    assert command[-1] == "--resume" and command[command.index("finetune/train.py") + 1:-1] == argv
    monkeypatch.undo()
    assert main(command[command.index("finetune/train.py") + 1:]) == 0
    assert json.loads((tmp_path / "run" / "adapter" / "voice.json").read_text())["run"]["training"]["steps"] == 4


def test_a_dry_run_shows_the_cards_text(tiny_run, capsys):
    from finetune.push import main as push_main

    assert push_main([str(tiny_run.root), "--repo", "someone/else", "--consent", "B agreed.", "--dry-run"]) == 0
    out = capsys.readouterr().out
    listing, end = json.JSONDecoder().raw_decode(out)
    assert listing["dry_run"] is True
    card = out[end:]
    assert "# else" in card and "## Consent" in card and "B agreed." in card and "library_name: peft" in card


# --- issue 27, item 7: runs that are stopped and resumed -------------------------------------------


def test_the_resume_command_works_from_where_the_user_is(embedded_tiny, corpus, tmp_path, monkeypatch, capsys):
    real_save = finetune.train.save_checkpoint

    def save_then_stop(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune.train, "save_checkpoint", save_then_stop)
    monkeypatch.chdir(tmp_path)  # not the checkout
    argv = ["--config", PRESET, f"model.base={embedded_tiny}", f"data.corpus={corpus}", "output.dir=runs",
            "output.name=run", *QUIET, "optim.steps=2", "output.save_every=1"]
    assert main(argv) == 130
    line = next(x for x in capsys.readouterr().err.splitlines() if x.startswith("train: stopped by"))
    command = shlex.split(line.split("continue with: ", 1)[1])
    script = next(i for i, arg in enumerate(command) if arg.endswith("train.py"))
    assert (Path.cwd() / command[script]).resolve() == Path(finetune.train.__file__).resolve()
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert main(command[script + 1:]) == 0


def test_resume_takes_overrides_after_it():
    cfg = finetune.train.parse_args(["--config", PRESET, "data.corpus=c", "--resume", "optim.steps=25", "eval.every=5"])
    assert (cfg.output.resume, cfg.optim.steps, cfg.eval.every) == ("auto", 25, 5)
    cfg = finetune.train.parse_args(["--config", PRESET, "data.corpus=c", "--resume", "runs/x/checkpoints/step_000002"])
    assert cfg.output.resume == "runs/x/checkpoints/step_000002"


def test_more_steps_on_resume_extend_the_schedule_and_keep_the_record(tiny_run, embedded_tiny, corpus, tmp_path, caplog):
    import shutil

    shutil.copytree(tiny_run.root, tmp_path / "run")
    rc, paths = train(tmp_path, embedded_tiny, corpus, *QUIET, "optim.steps=6", "output.save_every=2",
                      "output.consent=A agreed.", "--resume")
    assert rc == 0
    assert "optim.steps raised from 4 to 6" in caplog.text and "learning-rate schedule" in caplog.text
    lrs = {r["step"]: r["lr"] for r in read_metrics(paths.metrics) if r["split"] == "train"}
    low = 3e-3 * 0.1  # the preset's lr x min_lr_ratio, reached at the first part's last step
    # No jump back up: the schedule continues from where step 4 left it (its end) to the new end.
    assert lrs[4] == pytest.approx(low) and lrs[5] == pytest.approx(low) and lrs[6] == pytest.approx(low)
    training = json.loads((paths.adapter / "voice.json").read_text())["run"]["training"]
    assert training["resumes"] == [{"step": 4, "changed": {"optim.steps": [4, 6]}}]
    assert yaml.safe_load((paths.root / "config.yaml").read_text())["optim"]["steps"] == 6


def test_a_stop_mid_schedule_resumes_without_a_jump(embedded_tiny, corpus, tmp_path, monkeypatch):
    real_save = finetune.train.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune.train, "save_checkpoint", save_then_die)
    assert train(tmp_path, embedded_tiny, corpus, *QUIET, "optim.steps=8", "output.save_every=4")[0] == 130
    monkeypatch.undo()
    rc, paths = train(tmp_path, embedded_tiny, corpus, *QUIET, "optim.steps=12", "output.save_every=4", "--resume")
    assert rc == 0
    lrs = [r["lr"] for r in read_metrics(paths.metrics) if r["split"] == "train"]
    assert len(lrs) == 12 and all(b <= a + 1e-12 for a, b in zip(lrs[2:], lrs[3:]))  # decays from the warm-up on
    assert lrs[-1] == pytest.approx(3e-3 * 0.1) and lrs[4] < lrs[3]


def test_a_checkpoint_due_at_an_evaluation_is_written_before_it(embedded_tiny, corpus, tmp_path, monkeypatch):
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune.train, "held_out_loss", killed)
    rc, paths = train(tmp_path, embedded_tiny, corpus, "eval.scripts=[]", "eval.at_start=false", "eval.every=2",
                      "optim.steps=4", "output.save_every=2")
    assert rc == 130 and [p.name for p in paths.checkpoints.iterdir()] == ["step_000002"]
    monkeypatch.undo()
    rc, paths = train(tmp_path, embedded_tiny, corpus, "eval.scripts=[]", "eval.at_start=false", "eval.every=2",
                      "optim.steps=4", "output.save_every=2", "--resume")
    assert rc == 0
    # The evaluation the stop interrupted runs when the run continues.
    assert [r["step"] for r in read_metrics(paths.metrics) if r["split"] == "eval"] == [2, 4]


def test_evaluations_are_announced_and_held_out_loss_is_printed(embedded_tiny, corpus, tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="finetune")
    rc, paths = train(tmp_path, embedded_tiny, corpus, "eval.at_start=false", "eval.every=2", "optim.steps=2",
                      "output.save_every=0")
    assert rc == 0
    said = [r.getMessage() for r in caplog.records if r.name == "finetune.train"]
    held = next(r for r in read_metrics(paths.metrics) if r["split"] == "eval")
    assert "step 2: evaluating: held-out loss on 3 utterances, 1 sample script" in said
    assert any(m.startswith(f"step 2: held-out loss {held['loss']:.3f}") for m in said)
