"""The Adapt tab's jobs: recordings -> data prep -> a LoRA trained from a preset; the trained
adapter becomes a voice (in Speak, and in the server's voices folder). The page that shows them
(phase line, QC figures, loss plot, log) is `dia2.studio.adapt_view`.

Both steps run as background jobs (`dia2.studio.jobs`): `python -m data_prep` and
`python -m finetune.train`, the commands a user would type, so the page stays responsive and a
reload, or a studio restart, shows them. The studio is their client: it imports neither. Each
command line is first run as a check-only run (`--check`): a bad option or input is refused in
the command's own words before a job starts, and the check names the files the run will write
(its progress record, QC report, metrics, adapter), which the job's details keep and the page
reads. A file renamed by its owner is followed; a role the studio needs and the check does not
name is refused at the start, never a silently empty page.

Work folder layout: corpora/<name>/recordings (uploads of the last prep that succeeded; a new
prep's uploads wait in corpora/<name>/.recordings-* until it does), corpora/<name>/corpus (data
prep's output), runs/<name> (the trainer's run; its adapter/ becomes voice <name>), jobs/.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml

from dia2.data.corpus import META_FILE
from dia2.model.assets import TINY_MODEL
from dia2.serving.voices import check_name
from dia2.studio.backend import Studio, StudioError
from dia2.studio.jobs import CheckRefused, Job, check_command

PREP_READS = ("progress", "qc_report", "qc_text")
"""What the studio reads of a data-prep run (roles of the files its check names)."""
TRAIN_READS = ("progress", "metrics")
"""What the studio reads of a training run; its "adapter" too, when the run trains one."""
_CHILD_ENV = {"PYTHONUNBUFFERED": "1"}  # progress reaches the log as it happens
UNTRAINABLE = (("config", "--config"), ("weights", "--weights"), ("tokenizer", "--tokenizer"), ("mimi", "--mimi"),
               ("adapter", "--merge-adapter"))
"""Model options of the studio the trainer has no key for (finetune's model section: base, base_name, dtype)."""
STUDIO_KEYS = ("model.base", "data.corpus", "output.dir", "output.name")


def corpus_folder(studio: Studio, name: str) -> Path:
    return studio.work / "corpora" / name / "corpus"


def recordings_folder(studio: Studio, name: str) -> Path:
    return studio.work / "corpora" / name / "recordings"


def corpora(studio: Studio) -> list[str]:
    """Names of the prepared corpora (data prep finished writing them)."""
    root = studio.work / "corpora"
    return sorted(p.parent.parent.name for p in root.glob(f"*/corpus/{META_FILE}"))


def newest_corpus(studio: Studio) -> str | None:
    """The corpus prepared last (None before any)."""
    metas = list((studio.work / "corpora").glob(f"*/corpus/{META_FILE}"))
    return max(metas, key=lambda p: p.stat().st_mtime).parent.parent.name if metas else None


def presets(studio: Studio) -> list[str]:
    folder = Path(studio.options.studio.presets)
    return sorted(p.name for p in folder.glob("*.yaml")) if folder.is_dir() else []


def preset_settings(studio: Studio, preset: str) -> dict[str, Any]:
    """The base (model.base) and optim.steps a preset's YAML gives ({} for one that cannot be read:
    Train names the problem)."""
    try:
        raw = yaml.safe_load((Path(studio.options.studio.presets) / preset).read_text(encoding="utf-8")) or {}
        return {"base": raw.get("model", {}).get("base"), "steps": raw.get("optim", {}).get("steps")}
    except (OSError, yaml.YAMLError, AttributeError):
        return {}


def fitting_preset(studio: Studio) -> tuple[str | None, str]:
    """The preset to preselect for the model and device this studio runs, and why (for the page).

    The GPU presets train a 1B/2B model for thousands of steps: on a CPU, or for the tiny demo
    model, the preset written for the tiny model (a few steps on a CPU) is the one that finishes."""
    names = presets(studio)
    if not names:
        return None, ""
    bases = {n: preset_settings(studio, n).get("base") for n in names}
    source = studio.options.model.source
    on_cpu = studio.tts.model.device.type == "cpu"
    tiny = [n for n in names if bases[n] == TINY_MODEL]
    if tiny and (studio.random_demo or on_cpu):
        model = "the tiny demo model" if studio.random_demo else source
        return tiny[0], (f"{tiny[0]} is preselected: this studio runs {model} on the "
                         f"{'CPU' if on_cpu else 'GPU'}, and the other presets train a 1B/2B model on a GPU "
                         "for thousands of steps.")
    same = [n for n in names if bases[n] == source]
    if same:
        return same[0], f"{same[0]} is preselected: it is written for {source}, the model this studio speaks with."
    return names[0], f"no preset is written for {source}: check {names[0]}'s settings before training."


def _no_presets(studio: Studio) -> str:
    # The default folder is the repository checkout's configs/train: an installed studio has none.
    return (f"no training presets (*.yaml) in {studio.options.studio.presets}: start the studio with "
            "--presets FOLDER, e.g. the configs/train folder of a Dia2 checkout")


def check_trainable(studio: Studio) -> None:
    """Refuse Adapt when the studio speaks with a model the trainer cannot load: the trainer takes
    model.base only (with the config, weights, tokenizer and Mimi that model names), so a corpus or
    adapter made here would be for another model than the one the studio speaks with."""
    m = studio.options.model
    given = [f"{flag} {getattr(m, key)}" for key, flag in UNTRAINABLE if getattr(m, key)]
    if given:
        raise StudioError(
            f"Adapt is off: the studio was started with {', '.join(given)}, which the trainer cannot take (it loads "
            f"{m.source} as its model names it), so it would train for another model than the one speaking here. "
            f"Start the studio with --model {m.source} alone to adapt it, or save the model you speak with as a "
            "model folder and give that folder to --model")


def adapt_note(studio: Studio) -> str:
    """Why Adapt cannot be used in this studio ('' when it can), shown at the top of the tab."""
    try:
        check_trainable(studio)
    except StudioError as exc:
        return f"**{exc}**"
    return "" if presets(studio) else f"**{_no_presets(studio)}**"


def _name(text: str | None, what: str) -> str:
    name = (text or "").strip()
    if not name:
        raise StudioError(f"give the {what} a name (letters, digits, '-', '_' or '.')")
    return check_name(name, what)


def start_prep(studio: Studio, name: str, files: list[str] | None, folder: str | None) -> Job:
    """Copy the uploads (or take a folder on this machine) and start data prep on them. Uploads
    replace the corpus's stored recordings only once the prep succeeds (`job_ended`)."""
    name = _name(name, "corpus")
    check_trainable(studio)
    folder = (folder or "").strip()
    if files and folder:
        raise StudioError("give either uploaded recordings or a folder on this machine, not both")
    if not files and not folder:
        raise StudioError("no recordings: upload audio files, or name a folder of recordings on this machine")
    if folder and not Path(folder).expanduser().is_dir():
        raise StudioError(f"folder {folder} does not exist on this machine: give the path of a folder of recordings")
    names = [Path(f).name for f in files or []]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise StudioError(f"two uploads are named {', '.join(clashes)}: rename one (each recording keeps its file "
                          "name in the corpus)")
    output = corpus_folder(studio, name)

    def refuse_busy() -> None:
        _refuse_running(studio, "prep", output, f"corpus '{name}' is being prepared already")
        training = studio.jobs.running("train", corpus=name)
        if training:
            raise StudioError(f"corpus '{name}' is being trained on (job {training.id}): wait for that job, or "
                              "cancel it, before preparing the corpus again")

    refuse_busy()  # at once, before the uploads are copied and checked
    staged = None if folder else _stage_uploads(output.parent, files)
    try:
        source = Path(folder).expanduser() if folder else staged
        m, s = studio.options.model, studio.options.studio
        argv = [sys.executable, "-m", "data_prep", source, output, "--model", m.source, "--asr-model",
                s.whisper_model, "--device", m.device]
        details = {"name": name, "output": str(output), "input": str(source),
                   "writes": _checked(argv, "data prep", PREP_READS)["writes"]}
        if staged is not None:
            details.update(staged=str(staged), recordings=str(recordings_folder(studio, name)))
        with studio.jobs.exclusive():  # the refusal and the start are one step: two clicks cannot share the output
            refuse_busy()
            return studio.jobs.start("prep", f"prepare '{name}'", argv, env=_CHILD_ENV, details=details)
    except BaseException:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
        raise


def _refuse_running(studio: Studio, kind: str, output: Path, what: str) -> None:
    job = studio.jobs.running(kind, output=str(output))
    if job:
        raise StudioError(f"{what} (job {job.id}): wait for that job, or cancel it")


def _stage_uploads(corpus_root: Path, files: list[str]) -> Path:
    """The uploads copied into a hidden folder of their own, where data prep reads them."""
    staged = corpus_root / f".recordings-{uuid.uuid4().hex[:8]}"
    staged.mkdir(parents=True)
    try:
        for path in files:
            shutil.copyfile(path, staged / Path(path).name)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return staged


def _settle_uploads(job: Job) -> None:
    """At a prep's end: its staged uploads become the corpus's recordings (replacing the last
    ones whole) if it succeeded; otherwise they are removed and the stored recordings stay."""
    staged = Path(job.details["staged"]) if job.details.get("staged") else None
    if staged is None or not staged.exists():
        return
    if job.status != "done":
        shutil.rmtree(staged, ignore_errors=True)
        return
    final = Path(job.details["recordings"])
    old = final.with_name(f".{final.name}-old-{uuid.uuid4().hex[:8]}")
    if final.exists():
        os.replace(final, old)
    os.replace(staged, final)
    shutil.rmtree(old, ignore_errors=True)


def start_train(studio: Studio, corpus: str | None, preset: str | None, steps: float | None, name: str,
                extra: str | None) -> Job:
    """Start training a LoRA on a prepared corpus from a preset; the adapter becomes voice `name`."""
    name = _name(name, "adapter")
    check_trainable(studio)
    if not corpus or corpus not in corpora(studio):
        raise StudioError(f"choose a prepared corpus ({', '.join(corpora(studio)) or 'none yet: prepare one first'})")
    if not presets(studio):
        raise StudioError(_no_presets(studio))
    if not preset or preset not in presets(studio):
        raise StudioError(f"choose a training preset ({', '.join(presets(studio))})")
    if name in studio.voices.names() and studio.voices.get(name).prefix is not None:
        raise StudioError(f"a recorded voice is named '{name}': give the adapter another name")
    run = studio.work / "runs" / name
    preset_path = Path(studio.options.studio.presets) / preset
    items = [f"model.base={studio.options.model.source}", f"data.corpus={corpus_folder(studio, corpus)}",
             f"output.dir={run.parent}", f"output.name={name}", *_extra_options(extra)]
    if steps not in (None, ""):
        if float(steps) != int(steps) or int(steps) < 1:
            raise StudioError(f"steps {steps!r}: give a whole number of optimizer steps, at least 1")
        items.append(f"optim.steps={int(steps)}")
    argv = [sys.executable, "-m", "finetune.train", "--config", preset_path, *items]

    def refuse_busy() -> None:
        _refuse_running(studio, "train", run, f"adapter '{name}' is being trained already")
        _refuse_running(studio, "prep", corpus_folder(studio, corpus), f"corpus '{corpus}' is being prepared again")
        if run.exists():
            raise StudioError(f"a run named '{name}' exists ({run}): give the adapter another name")

    refuse_busy()  # at once, before the trainer's check
    plan = _checked(argv, "training options", TRAIN_READS)
    details = {"name": name, "output": str(run), "steps": plan["steps"], "corpus": corpus, "writes": plan["writes"]}
    with studio.jobs.exclusive():  # the refusal and the start are one step: two clicks cannot share a run folder
        refuse_busy()
        return studio.jobs.start("train", f"train '{name}' on '{corpus}'", argv, env=_CHILD_ENV, details=details)


def _extra_options(extra: str | None) -> list[str]:
    """The page's extra key=value items; the keys the studio sets itself are refused."""
    try:
        items = shlex.split(extra or "")
    except ValueError as exc:
        raise StudioError(f"extra options {extra!r}: {exc}: close the quote") from None
    bad = [o for o in items if "=" not in o]
    if bad:
        raise StudioError(f"extra options {' '.join(bad)}: write key=value items, e.g. optim.lr=1e-3")
    taken = [o for o in items if o.partition("=")[0].strip() in STUDIO_KEYS]
    if taken:
        raise StudioError(f"extra options {' '.join(taken)}: the studio sets {', '.join(STUDIO_KEYS)} itself "
                          "(the base it speaks with, the corpus, the run folder and the adapter name): leave them out")
    return items


def _checked(argv: list[Any], what: str, reads: tuple[str, ...]) -> dict[str, Any]:
    """The check-only run of `argv` (what the run will write, and its facts). Its refusal, in the
    command's own words, becomes the page's message after `what` (the part of the page it is about)."""
    try:
        plan = check_command(argv, env=_CHILD_ENV)
    except CheckRefused as exc:
        raise StudioError(f"{what}: {exc}") from None
    missing = [role for role in reads if role not in plan["writes"]]
    if missing:
        raise StudioError(f"{what}: the check of {argv[2]} names no {', '.join(missing)} file (it names "
                          f"{', '.join(plan['writes'])}): the studio and {argv[2]} come from different versions of "
                          "the toolkit; install one version of it")
    return plan


def job_ended(studio: Studio, job: Job) -> str:
    """What the studio does when a job ends (JobStore's on_end): a prep's uploads replace the
    corpus's recordings, or are dropped; a trained adapter becomes a voice."""
    if job.kind == "prep":
        _settle_uploads(job)
    if job.status != "done":
        return job.note or _failure(job)
    if job.kind == "prep":
        report = written(job, "qc_report")
        return qc_summary(report) if report else "prepared (a job of an earlier studio: no QC figures)"
    adapter = written(job, "adapter")
    if adapter is None:
        return "the run trained no adapter (a full fine-tune): nothing was added to the voices"
    if not (adapter / "adapter_config.json").is_file():
        return f"the run wrote no adapter in {adapter}: nothing was added to the voices"
    studio.add_adapter_voice(job.details["name"], adapter)
    return f"adapter voice '{job.details['name']}' added: choose it in Speak; the speech server serves it too"


def written(job: Job, role: str) -> Path | None:
    """Where the job's command writes its `role` file, as its check named it (None: not named,
    or a job of a studio before checks named files)."""
    path = job.details.get("writes", {}).get(role)
    return Path(path) if path else None


def _failure(job: Job) -> str:
    if job.status == "cancelled":
        return "cancelled"
    lines = [line for line in job.log_tail(2000).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [f"exit code {job.returncode}"])[-1]


def qc_summary(path: Path) -> str:
    """One line of data prep's QC report (qc_report.json at `path`), its figures as the report gives them."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return f"no QC report at {path}"
    u, files, hours = report["utterances"], report["files"], report["hours"]
    skipped = ", ".join(f"{k} {v}" for k, v in report.get("skipped_by_reason", {}).items()) or "nothing"
    return (f"{u['kept']} utterance(s), {hours['kept'] * 3600:.1f} s kept of {hours['input'] * 3600:.1f} s read, "
            f"from {files['kept']} of {files['found']} recording(s); skipped: {skipped}")
