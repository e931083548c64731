"""Every entry point refuses a bad input in a second, before it imports the model stack or loads a
model (issue 27, items 1-3, 8 and 9): each case runs the real command (`python -m MODULE`) in a
child process in which transformers, PEFT, bitsandbytes, Accelerate, Whisper, gradio, the Hub
client... cannot be imported (`tests/child/sitecustomize.py`), so a command that reached a loader
would fail with an ImportError there instead of naming the input. The cases with torch share one
such child, which runs them one after another (`tests.helpers.commands`: one torch start-up, not
one per case); the push cases, with torch blocked too, start their own. The trainer, whose module
imports Accelerate, is checked in-process with its base loader replaced by a failure.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import finetune.train
from tests.conftest import HEAVY_MODULES, REPO_ROOT, child_env
from tests.helpers.commands import CommandChild

FIXTURE_VOICE = REPO_ROOT / "tests" / "fixtures" / "audio" / "voice_a.flac"
PRESET = str(REPO_ROOT / "configs" / "train" / "tiny-cpu.yaml")


def run(module: str, *args: object, cwd: Path, block: tuple[str, ...] = HEAVY_MODULES, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120,
        env=child_env(block=block, **env),
    )


@pytest.fixture(scope="module")
def command():
    """`command(module, *args, cwd=...)`: `python -m module args` in the module's one child with the model stack blocked."""
    child = CommandChild(child_env(block=HEAVY_MODULES))
    yield child.run
    child.close()


def refused(proc: subprocess.CompletedProcess, *said: str) -> str:
    """The one error line of a refusal that says everything in `said`."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(lines) == 1, proc.stderr
    for text in said:
        assert text in lines[0], proc.stderr
    return lines[0]


@pytest.fixture
def work(tmp_path) -> Path:
    """A user's folder: recordings (one nested, with a space), a file where a folder is expected,
    and runs/ holding one finished run without a consent statement."""
    (tmp_path / "my recordings" / "day 1").mkdir(parents=True)
    shutil.copy(FIXTURE_VOICE, tmp_path / "my recordings" / "day 1" / "take 1.flac")
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    adapter = tmp_path / "runs" / "me" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "tiny"}))
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    (adapter / "dia2_voice.json").write_text(json.dumps({"format": "dia2-voice/1", "base_model": "tiny", "consent": ""}))
    return tmp_path


# --- finetune.push: no torch at all before the upload ---------------------------------------------

PUSH_BLOCK = (*HEAVY_MODULES, "torch")


def test_push_names_a_missing_run_folder_and_the_finished_runs_beside_it(work):
    line = refused(run("finetune.push", "runs/nope", "--repo", "me/voice", "--dry-run", cwd=work, block=PUSH_BLOCK),
                   "runs/nope does not exist")
    assert "finished runs in runs: me" in line


def test_push_refuses_a_run_without_consent(work):
    refused(run("finetune.push", "runs/me", "--repo", "me/voice", "--dry-run", cwd=work, block=PUSH_BLOCK),
            "no consent statement")


@pytest.mark.parametrize("repo", ["not_a_repo_id", "me/bad name", "me/-dash-", "me/a--b", "a/b/c"])
def test_push_checks_the_repo_id_in_a_dry_run_too(work, repo):
    refused(run("finetune.push", "runs/me", "--repo", repo, "--consent", "A agreed.", "--dry-run", cwd=work,
                block=PUSH_BLOCK), f"--repo {repo}")


def test_push_without_a_token_is_refused_before_anything_loads(work):
    block = tuple(m for m in PUSH_BLOCK if m != "huggingface_hub")  # it knows where tokens are stored
    proc = run("finetune.push", "runs/me", "--repo", "me/voice", "--consent", "A agreed.", cwd=work, block=block,
               HF_HOME=str(work / "hf-home"), HF_TOKEN="")
    refused(proc, "no Hugging Face token")


def test_push_names_the_broken_voice_file_of_a_run_and_the_fix(work):
    (work / "runs" / "me" / "adapter" / "voice.json").write_text(json.dumps({"format": "dia2-voice/9"}))
    refused(run("finetune.push", "runs/me", "--repo", "me/voice", "--consent", "A agreed.", "--dry-run", cwd=work,
                block=PUSH_BLOCK), "runs/me/adapter/voice.json", "upgrade dia2-toolkit")


# --- dia2-eval ------------------------------------------------------------------------------------


def test_eval_refuses_a_reference_folder_without_recordings(work, command):
    refused(command("dia2.evaluation.cli", "--model", "tiny", "--references", "empty", "out", cwd=work),
            "reference folder empty", "no recordings")
    assert not (work / "out").exists()


def test_eval_reports_a_prompt_typo_before_the_model_loads(work, command):
    (work / "prompts.txt").write_text("Hello there.\n[S1] Hi [S3] you.\n")
    refused(command("dia2.evaluation.cli", "--model", "tiny", "--references", "my recordings", "--prompts", "prompts.txt",
                "out", cwd=work), "prompt 2", "unknown tag '[S3]'")


def test_eval_refuses_a_missing_adapter_before_loading(work, command):
    refused(command("dia2.evaluation.cli", "--model", "tiny", "--references", "my recordings", "--adapter", "runs/nope/adapter",
                "out", cwd=work), "--adapter runs/nope/adapter")


# --- dia2-infer -----------------------------------------------------------------------------------


def test_infer_reports_a_script_typo_before_the_model_loads(work, command):
    refused(command("dia2.cli", "--tiny", "--text", "[S1] Hello. [S3] Hi!", "out.wav", cwd=work), "unknown tag '[S3]'")


def test_infer_refuses_an_output_it_cannot_write_before_generating(work, command):
    refused(command("dia2.cli", "--tiny", "--text", "[S1] Hello.", "a-file/out.wav", cwd=work), "a-file/out.wav", "cannot be written")
    refused(command("dia2.cli", "--tiny", "--text", "[S1] Hello.", "--timestamps", "a-file/w.json", "out.wav", cwd=work),
            "--timestamps a-file/w.json", "cannot be written")


def test_infer_refuses_a_missing_adapter_before_loading(work, command):
    refused(command("dia2.cli", "--tiny", "--adapter", "runs/nope/adapter", "--text", "[S1] Hello.", "out.wav", cwd=work),
            "runs/nope/adapter")


# --- dia2-prep ------------------------------------------------------------------------------------


def test_prep_refuses_an_output_it_cannot_write_before_loading(work, command):
    refused(command("data_prep", "my recordings", "a-file/corpus", "--model", "tiny", cwd=work), "a-file/corpus", "cannot be written")
    refused(command("data_prep", "empty", "corpus", "--model", "tiny", cwd=work), "no audio files in empty")


# --- the server and the studio ---------------------------------------------------------------------


def test_server_refuses_a_missing_adapter_before_loading(work, command):
    refused(command("dia2.api_server", "--tiny", "--adapter", "me=runs/nope/adapter", cwd=work), "runs/nope/adapter")
    refused(command("dia2.api_server", "--tiny", "--merge-adapter", "runs/nope/adapter", cwd=work), "runs/nope/adapter")


def test_studio_refuses_a_missing_adapter_or_presets_folder_before_loading(work, command):
    refused(command("dia2.studio.app", "--tiny", "--adapter", "me=runs/nope/adapter", "--work", "studio", cwd=work),
            "runs/nope/adapter")
    refused(command("dia2.studio.app", "--tiny", "--presets", "nope", "--work", "studio", cwd=work), "--presets nope")
    assert not (work / "studio").exists()


# --- the trainer (in-process: its module imports Accelerate) ---------------------------------------


@pytest.mark.parametrize(
    "overrides, said",
    [(["output.dir=a-file/runs"], "a-file/runs/x cannot be written"),
     (["--push-to-hub", "not_a_repo_id"], "output.push_to_hub=not_a_repo_id")],
)
def test_trainer_refuses_before_the_base_loads(work, monkeypatch, capsys, overrides, said):
    monkeypatch.chdir(work)
    monkeypatch.setattr(finetune.train, "load_base", lambda *a, **k: pytest.fail("the base was loaded"))
    (work / "corpus").mkdir()  # checked after these
    rc = finetune.train.main(["--config", PRESET, "data.corpus=corpus", "output.name=x", *overrides])
    assert rc == 1
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err


# --- a voice folder: each command that reads one names the broken file in it and the fix (issue 25) -


def broken_voice(folder: Path, damage: str) -> Path:
    """A voice folder with a prefix, as dia2-infer --save-voice writes it, then broken by `damage`."""
    import torch

    from dia2.generation.prefix import VoicePrefix
    from dia2.generation.voice import Voice, write_voice
    from dia2.text.words import SpokenWord

    prefix = VoicePrefix(torch.zeros(8, 20, dtype=torch.long), (SpokenWord("hello", 0.3, 0.6),))
    write_voice(Voice(prefix=prefix), folder)
    record = json.loads((folder / "voice.json").read_text())
    if damage == "codes.npy missing":
        (folder / "codes.npy").unlink()
    elif damage == "a newer format":
        (folder / "voice.json").write_text(json.dumps({**record, "format": "dia2-voice/9"}))
    elif damage == "a word without its end":
        del record["prefix"]["words"][0]["end"]
        (folder / "voice.json").write_text(json.dumps(record))
    return folder


@pytest.mark.parametrize("damage,file,fix", [
    ("codes.npy missing", "codes.npy", "copy the whole voice folder"),
    ("a newer format", "voice.json", "upgrade dia2-toolkit"),
    ("a word without its end", "voice.json", "make the voice again"),
])
def test_infer_and_eval_name_the_broken_file_of_a_voice_and_the_fix(work, damage, file, fix, command):
    voice = broken_voice(work / "voices" / "me", damage)
    said = (str(Path("voices") / "me" / file), fix)
    refused(command("dia2.cli", "--tiny", "--voice", "voices/me", "--text", "[S1] Hello.", "out.wav", cwd=work), *said)
    refused(command("dia2.evaluation.cli", "--model", "tiny", "--references", "my recordings", "--voice", "voices/me",
                "out", cwd=work), *said)
    assert not (work / "out.wav").exists() and not (work / "out").exists() and voice.is_dir()
