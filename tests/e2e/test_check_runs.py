"""The two commands the studio drives, as their client sees them: the check-only runs
(`dia2-prep --check`, `finetune/train.py --check`) refuse a bad command line with one error line
and exit 2, accept a good one, and write nothing either way; the files a check names are the
ones the real run writes; and the progress records data prep and the trainer write are what
the studio's page reads (`dia2.studio.adapt_view`), from a tiny prep and a two-step training run.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import pytest

import finetune.train
from data_prep.cli import main as prep_main
from data_prep.config import AsrOptions, CorpusModelOptions, PrepConfig, RunOptions
from data_prep.pipeline import check_run, run_prep
from data_prep.qc import JSON_FILE, TEXT_FILE
from dia2.data.corpus import META_FILE, CorpusMeta
from dia2.progress import Phase, read_progress
from dia2.studio.adapt_view import phase_line, train_losses
from dia2.studio.jobs import Job
from tests.conftest import REPO_ROOT

PRESET = str(REPO_ROOT / "configs" / "train" / "tiny-cpu.yaml")
VOICE = REPO_ROOT / "tests" / "fixtures" / "audio" / "voice_a.flac"
QUIET = ["eval.scripts=[]", "eval.every=0", "eval.at_start=false", "output.save_every=0"]


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def checked(capsys, main, argv: list[str], folder: Path) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a check-only run, which must leave `folder` as it was."""
    before = listing(folder)
    try:
        code = main([*argv, "--check"])
    except SystemExit as exit_:  # argparse's refusal of a bad flag value
        code = exit_.code
    out, err = capsys.readouterr()
    assert listing(folder) == before, "a check-only run wrote something"
    return code, out, err


def refused(code: int, out: str, err: str, said: str) -> None:
    assert code == 2 and out == "", (code, out, err)
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and said in errors[0], err
    assert "Traceback" not in err


@pytest.fixture
def work(tmp_path, tiny_cache, monkeypatch) -> Path:
    """A user's folder: recordings, an empty folder, a file where a folder goes, and a corpus
    (its meta: all a check reads of it); `tiny` is the session's tiny bundle."""
    monkeypatch.setenv("DIA2_CACHE", str(tiny_cache))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recordings").mkdir()
    shutil.copyfile(VOICE, tmp_path / "recordings" / "take.flac")
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "not-a-corpus").mkdir()
    (tmp_path / "not-a-corpus" / "thesis.tex").write_text("precious")
    (tmp_path / "corpus").mkdir()
    CorpusMeta(codec="tiny/mimi", codec_fingerprint="-", num_codebooks=8, tokenizer="tiny", tokenizer_fingerprint="-",
               frame_rate=12.5, sample_rate=24000, delay_pattern=(0,), asr_model="-", tool_version="-").save(tmp_path / "corpus")
    return tmp_path


# --- dia2-prep --check ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "said"),
    [(["nope", "out"], "input nope does not exist"),
     (["empty", "out"], "no audio files in empty"),
     (["recordings", "a-file/corpus"], "a-file/corpus cannot be written"),
     (["recordings", "not-a-corpus"], "is not a dia2-prep corpus"),
     (["recordings", "out", "--min-seconds", "5", "--max-seconds", "2"], "--min-seconds 5.0 is more than"),
     (["recordings", "out", "--asr-device", "gpu"], "--asr-device gpu: not a device name"),
     (["recordings", "out", "--model", "no-such-folder"], "model 'no-such-folder' is neither")],
)
def test_the_prep_check_refuses_a_bad_command_line_and_writes_nothing(work, capsys, args, said):
    model = [] if "--model" in args else ["--model", "tiny"]
    refused(*checked(capsys, prep_main, [*args, *model], work), said)


def test_the_prep_check_names_what_the_run_will_write_and_writes_nothing(work, capsys):
    code, out, err = checked(capsys, prep_main, ["recordings", "out", "--tiny"], work)
    assert code == 0 and err == "" and len(out.splitlines()) == 1
    plan = json.loads(out)
    corpus = work / "out"
    assert plan == {"writes": {"corpus": str(corpus), "meta": str(corpus / META_FILE), "qc_report": str(corpus / JSON_FILE),
                               "qc_text": str(corpus / TEXT_FILE), "progress": str(corpus / "progress.json")},
                    "recordings": 1}


# --- finetune/train.py --check ----------------------------------------------------------------------


def train_args(*overrides: str) -> list[str]:
    return ["--config", PRESET, "model.base=tiny", "data.corpus=corpus", "output.dir=runs", "output.name=me", *overrides]


@pytest.mark.parametrize(
    ("overrides", "said"),
    [(["optim.lr=fast"], "'optim.lr' must be float, got 'fast'"),
     (["optim.stepz=3"], "unknown config key 'optim.stepz' (did you mean 'optim.steps'?)"),
     (["data.corpus=nope"], "data.corpus=nope does not exist"),
     (["data.corpus=empty"], "empty has no corpus_meta.json"),
     (["output.dir=a-file/runs"], "a-file/runs/me cannot be written"),
     (["model.base=no-such-folder"], "model 'no-such-folder' is neither"),
     (["--resume"], "holds no complete checkpoint"),
     (["--push-to-hub", "not_a_repo_id"], "output.push_to_hub=not_a_repo_id")],
)
def test_the_trainer_check_refuses_a_bad_command_line_and_writes_nothing(work, capsys, overrides, said):
    refused(*checked(capsys, finetune.train.main, train_args(*overrides), work), said)


def test_the_trainer_check_names_what_the_run_will_write_and_writes_nothing(work, capsys, monkeypatch):
    monkeypatch.setattr(finetune.train, "load_base", lambda *a, **k: pytest.fail("the base was loaded"))
    code, out, err = checked(capsys, finetune.train.main, train_args("optim.steps=7"), work)
    assert code == 0 and len(out.splitlines()) == 1, err
    run = work / "runs" / "me"
    assert json.loads(out) == {
        "writes": {"run": str(run), "config": str(run / "config.yaml"), "progress": str(run / "progress.json"),
                   "metrics": str(run / "metrics.jsonl"), "checkpoints": str(run / "checkpoints"),
                   "adapter": str(run / "adapter")},
        "steps": 7}
    code, out, _ = checked(capsys, finetune.train.main, train_args("lora.full_finetune=true"), work)
    assert code == 0 and "adapter" not in json.loads(out)["writes"] and json.loads(out)["writes"]["model"] == str(run / "model")


# --- the records the studio reads, from real runs -----------------------------------------------------


def job(kind: str, started: float, details: dict) -> Job:
    """The studio's job of a command that has ended and been acted on (the page's last view of it)."""
    return Job("20260101-000000-x-000000", kind, kind, "done", started, Path("."), details, 0, time.time(), "", True)


@pytest.fixture(scope="module")
def prepared(tiny_bundle_dir, prep_model, whisper, tiny_en, tmp_path_factory) -> dict:
    """A data prep of one recording, as the studio runs it: its check, then the run."""
    root = tmp_path_factory.mktemp("prep")
    (root / "recordings").mkdir()
    shutil.copyfile(VOICE, root / "recordings" / "take.flac")
    config = PrepConfig(root / "recordings", root / "corpus", model=CorpusModelOptions(model=str(tiny_bundle_dir)),
                        asr=AsrOptions(asr_model=tiny_en), run=RunOptions(threads=1, progress=False))
    plan, started = check_run(config), time.time()
    run_prep(config, prep_model, whisper)
    return {"plan": plan, "started": started, "corpus": root / "corpus"}


def test_data_preps_progress_record_and_qc_report_are_what_the_studio_reads(prepared):
    from dia2.studio.adapt import qc_summary

    writes = prepared["plan"]["writes"]
    record = read_progress(writes["progress"], since=prepared["started"])
    assert record is not None and (record.phase, record.done, record.total, record.unit) == (Phase.DONE, 1, 1, "recording")
    assert phase_line(job("prep", prepared["started"], {"writes": writes})) == "phase: done, 1 of 1 recordings"
    assert "from 1 of 1 recording(s)" in qc_summary(Path(writes["qc_report"]))
    assert Path(writes["qc_text"]).read_text().strip() and Path(writes["meta"]).is_file()
    # The record of an earlier run is not a new job's: a prep started again on the corpus is loading.
    again = dataclasses.replace(job("prep", time.time() + 1, {"writes": writes}), status="running", handled=False)
    assert read_progress(writes["progress"], since=again.started) is None
    assert phase_line(again) == "phase: loading the models (speech recognition, Mimi)"


def test_the_trainers_progress_record_and_metrics_are_what_the_studio_reads(prepared, tiny_bundle_dir, tmp_path, capsys):
    args = ["--config", PRESET, f"model.base={tiny_bundle_dir}", f"data.corpus={prepared['corpus']}",
            f"output.dir={tmp_path}", "output.name=voice", "optim.steps=2", *QUIET]
    assert finetune.train.main([*args, "--check"]) == 0
    plan, started = json.loads(capsys.readouterr().out), time.time()
    assert finetune.train.main(args) == 0
    writes = plan["writes"]
    record = read_progress(writes["progress"], since=started)
    assert record is not None and (record.phase, record.done, record.total, record.unit) == (Phase.DONE, 2, 2, "step")
    ended = job("train", started, {"writes": writes, "steps": plan["steps"]})
    assert phase_line(ended) == "phase: done, 2 of 2 steps"
    assert [r["step"] for r in train_losses(ended)] == [1, 2]
    assert (Path(writes["adapter"]) / "adapter_config.json").is_file()


def test_the_page_has_a_line_for_every_phase_a_command_writes(tmp_path):
    from dia2.progress import ProgressFile

    prep, train = {Phase.PREPARING, Phase.WRITING, Phase.DONE}, {Phase.TRAINING, Phase.EVALUATING, Phase.SAVING, Phase.DONE}
    assert prep | train == set(Phase), "a new phase needs its line on the studio's page"
    path = tmp_path / "progress.json"
    for kind, phases, loading in (("prep", prep, "loading the models"), ("train", train, "loading the base model")):
        for phase in phases:
            ProgressFile(path, "unit").write(phase, 1, 2, eta_s=30.0)
            running = dataclasses.replace(job(kind, 0.0, {"writes": {"progress": str(path)}, "steps": 2}),
                                          status="running", handled=False)
            assert loading not in phase_line(running), (kind, phase)
