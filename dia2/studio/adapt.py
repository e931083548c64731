"""The Adapt tab: recordings -> data prep (with its QC summary) -> a LoRA trained from a preset,
with progress, a live loss plot and a cancel button; the trained adapter becomes a voice (in
Speak, and in the server's voices folder).

Both steps run as background jobs (`dia2.studio.jobs`): `python -m data_prep` and
`python -m finetune.train`, the commands a user would type, so the page stays responsive and a
reload, or a studio restart, shows them. The studio reads their progress from what they write:
data prep's progress bar (in the job's log) and QC report, the trainer's metrics.jsonl.

Work folder layout: corpora/<name>/recordings (uploads), corpora/<name>/corpus (data prep's
output), runs/<name> (the trainer's run; its adapter/ becomes voice <name>), jobs/.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

from dia2.errors import Dia2Error
from dia2.serving.voices import check_name
from dia2.studio.jobs import Job
from dia2.studio.runtime import Studio, StudioError, job_label, shows_errors

QC_TEXT, QC_JSON, CORPUS_META = "qc_report.txt", "qc_report.json", "corpus_meta.json"
METRICS, ADAPTER = "metrics.jsonl", "adapter"
_PREP_BAR = re.compile(r"recordings:\s*\d+%.*?(\d+)/(\d+)")
_CHILD_ENV = {"PYTHONUNBUFFERED": "1"}  # progress reaches the log as it happens
UNTRAINABLE = (("config", "--config"), ("weights", "--weights"), ("tokenizer", "--tokenizer"), ("mimi", "--mimi"),
               ("adapter", "--merge-adapter"))
"""Model options of the studio the trainer has no key for (finetune's model section: base, base_name, dtype)."""
STUDIO_KEYS = ("model.base", "data.corpus", "output.dir", "output.name")


def corpus_folder(studio: Studio, name: str) -> Path:
    return studio.work / "corpora" / name / "corpus"


def corpora(studio: Studio) -> list[str]:
    """Names of the prepared corpora (data prep finished writing them)."""
    root = studio.work / "corpora"
    return sorted(p.parent.parent.name for p in root.glob(f"*/corpus/{CORPUS_META}"))


def presets(studio: Studio) -> list[str]:
    folder = Path(studio.options.studio.presets)
    return sorted(p.name for p in folder.glob("*.yaml")) if folder.is_dir() else []


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
            f"Start the studio with --hf {m.source} alone to adapt it, or save the model you speak with as a "
            "model folder and give that folder to --hf")


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
    return check_name(name)


def start_prep(studio: Studio, name: str, files: list[str] | None, folder: str | None) -> Job:
    """Copy the uploads (or take a folder on this machine) and start data prep on them."""
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
    with studio.jobs.exclusive():  # the check and the start are one step: two clicks cannot share the output
        _refuse_running(studio, "prep", output, f"corpus '{name}' is being prepared already")
        training = studio.jobs.running("train", corpus=name)
        if training:
            raise StudioError(f"corpus '{name}' is being trained on (job {training.id}): wait for that job, or "
                              "cancel it, before preparing the corpus again")
        source = Path(folder).expanduser() if folder else _store_uploads(output.parent / "recordings", files)
        m, s = studio.options.model, studio.options.studio
        argv = [sys.executable, "-m", "data_prep", source, output, "--model", m.source, "--asr-model",
                s.whisper_model, "--device", m.device]
        return studio.jobs.start("prep", f"prepare '{name}'", argv, env=_CHILD_ENV,
                                 details={"name": name, "output": str(output), "input": str(source)})


def _refuse_running(studio: Studio, kind: str, output: Path, what: str) -> None:
    job = studio.jobs.running(kind, output=str(output))
    if job:
        raise StudioError(f"{what} (job {job.id}): wait for that job, or cancel it")


def _store_uploads(folder: Path, files: list[str]) -> Path:
    """The uploads as `folder`'s only recordings (an earlier upload's files are replaced, not mixed in):
    copied under a temporary name, then renamed into place."""
    fresh = folder.with_name(f".{folder.name}-{uuid.uuid4().hex[:8]}")
    fresh.mkdir(parents=True)
    try:
        for path in files:
            shutil.copyfile(path, fresh / Path(path).name)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    old = folder.with_name(f".{folder.name}-old-{uuid.uuid4().hex[:8]}")
    if folder.exists():
        os.replace(folder, old)
    os.replace(fresh, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


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
    if name in studio.voices.names() and studio.voices.get(name).voice is not None:
        raise StudioError(f"a recorded voice is named '{name}': give the adapter another name")
    run = studio.work / "runs" / name
    preset_path = Path(studio.options.studio.presets) / preset
    items = [f"model.base={studio.options.model.source}", f"data.corpus={corpus_folder(studio, corpus)}",
             f"output.dir={run.parent}", f"output.name={name}", *_extra_options(extra)]
    if steps not in (None, ""):
        if float(steps) != int(steps) or int(steps) < 1:
            raise StudioError(f"steps {steps!r}: give a whole number of optimizer steps, at least 1")
        items.append(f"optim.steps={int(steps)}")
    total = _checked_config(preset_path, items).optim.steps
    argv = [sys.executable, "-m", "finetune.train", "--config", preset_path, *items]
    with studio.jobs.exclusive():  # the checks and the start are one step: two clicks cannot share a run folder
        _refuse_running(studio, "train", run, f"adapter '{name}' is being trained already")
        _refuse_running(studio, "prep", corpus_folder(studio, corpus), f"corpus '{corpus}' is being prepared again")
        if run.exists():
            raise StudioError(f"a run named '{name}' exists ({run}): give the adapter another name")
        return studio.jobs.start("train", f"train '{name}' on '{corpus}'", argv, env=_CHILD_ENV,
                                 details={"name": name, "output": str(run), "steps": total, "corpus": corpus})


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


def _checked_config(preset: Path, items: list[str]) -> Any:
    """The trainer's config as it will run (finetune.config_file.load_config): a bad key or value is
    refused here, with the trainer's message naming it, before a job starts."""
    # The studio drives the trainer, as its entry point; the trainer's own checks are the ones that count.
    from finetune.config_file import load_config

    try:
        return load_config(preset, items)
    except Dia2Error as exc:
        raise StudioError(f"training options: {exc}") from None


def job_ended(studio: Studio, job: Job) -> str:
    """What the studio does when a job ends (JobStore's on_end): a trained adapter becomes a voice."""
    if job.status != "done":
        return job.note or _failure(job)
    output = Path(job.details["output"])
    if job.kind == "prep":
        return qc_summary(output)
    adapter = output / ADAPTER
    if not (adapter / "adapter_config.json").is_file():
        return f"the run wrote no adapter in {adapter} (a full fine-tune writes model/): nothing was added to the voices"
    studio.add_adapter_voice(job.details["name"], adapter)
    return f"adapter voice '{job.details['name']}' added: choose it in Speak; the speech server serves it too"


def _failure(job: Job) -> str:
    if job.status == "cancelled":
        return "cancelled"
    lines = [line for line in job.log_tail(2000).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [f"exit code {job.returncode}"])[-1]


def qc_summary(corpus: Path) -> str:
    """One line of data prep's QC report."""
    try:
        report = json.loads((corpus / QC_JSON).read_text())
    except (OSError, ValueError):
        return f"no QC report in {corpus}"
    u, files = report["utterances"], report["files"]
    skipped = ", ".join(f"{k} {v}" for k, v in report.get("skipped_by_reason", {}).items()) or "nothing"
    hours = report["hours"]
    return (f"kept {u['kept']} utterance(s), {hours['kept'] * 3600:.1f} s of the {hours['input'] * 3600:.1f} s read, "
            f"from {files['kept']} of {files['found']} recording(s); skipped: {skipped}")


def progress(job: Job) -> tuple[int, int]:
    """(done, total) of a job: recordings prepared, or optimizer steps taken."""
    if job.kind == "prep":
        found = _PREP_BAR.findall(job.log_tail(4000))
        return (int(found[-1][0]), int(found[-1][1])) if found else (0, 0)
    return (len(train_losses(job)), int(job.details.get("steps", 0)))


def train_losses(job: Job) -> list[dict[str, Any]]:
    """The trainer's train records so far (metrics.jsonl), one per step."""
    path = Path(job.details["output"]) / METRICS
    records = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written
        if record.get("split") == "train":
            records.append(record)
    return records


def job_view(studio: Studio, job_id: str | None) -> tuple[str, Any, str, str]:
    """(status, loss table, QC report, log tail) of a job, for the page."""
    import pandas as pd

    empty = pd.DataFrame({"step": [], "loss": []})
    if not job_id:
        return "no job yet: prepare data or train", empty, "", ""
    job = studio.jobs.get(job_id)
    if job.status == "damaged":
        return f"**{job_label(job)}**\n\n{job.note}", empty, "", ""
    done, total = progress(job)
    unit = "recording(s)" if job.kind == "prep" else "step(s)"
    lines = [f"**{job_label(job)}**", f"progress: {done}/{total or '?'} {unit}"]
    if job.handled:
        lines.append(f"result: {job.note}")
    qc = ""
    if job.kind == "prep":
        try:
            qc = (Path(job.details["output"]) / QC_TEXT).read_text()
        except OSError:
            qc = ""
    losses = pd.DataFrame({"step": [r["step"] for r in train_losses(job)], "loss": [r["loss"] for r in train_losses(job)]}) \
        if job.kind == "train" else empty
    return "\n\n".join(lines), losses, qc, job.log_tail(3000)


def build_adapt_tab(studio: Studio) -> dict[str, Any]:
    """The tab's components; returns the job picker and its view (the app refreshes them on load)."""
    import gradio as gr

    gr.Markdown(adapt_note(studio), elem_id="adapt-note")
    with gr.Row():
        with gr.Column():
            gr.Markdown("### 1. Prepare data\nUpload recordings of one speaker, or name a folder of them on this machine.")
            corpus_name = gr.Textbox(label="Corpus name", elem_id="adapt-corpus-name")
            files = gr.File(file_count="multiple", type="filepath", label="Recordings", elem_id="adapt-files")
            folder = gr.Textbox(label="…or a folder on this machine", elem_id="adapt-folder")
            prep_button = gr.Button("Prepare data", variant="primary", elem_id="adapt-prep")
        with gr.Column():
            gr.Markdown("### 2. Train a LoRA adapter")
            corpus = gr.Dropdown(corpora(studio), label="Prepared corpus", elem_id="adapt-corpus",
                                 allow_custom_value=True)
            preset = gr.Dropdown(presets(studio), value=(presets(studio) or [None])[0], label="Preset",
                                 allow_custom_value=True)
            steps = gr.Number(label="Steps (empty: the preset's)", precision=0, value=None)
            adapter_name = gr.Textbox(label="Adapter (voice) name", elem_id="adapt-name")
            extra = gr.Textbox(label="Extra options (key=value ...)", placeholder="optim.lr=1e-3 eval.every=50")
            train_button = gr.Button("Train", variant="primary", elem_id="adapt-train")
    with gr.Row():
        job = gr.Dropdown(studio.job_choices(), label="Job", elem_id="adapt-job", scale=4,
                              allow_custom_value=True)
        refresh_button = gr.Button("Refresh", scale=1)
        cancel_button = gr.Button("Cancel job", variant="stop", scale=1, elem_id="adapt-cancel")
    status = gr.Markdown(elem_id="adapt-status")
    with gr.Row():
        loss = gr.LinePlot(x="step", y="loss", title="Training loss", elem_id="adapt-loss")
        qc = gr.Textbox(label="QC report", lines=12, interactive=False)
    log = gr.Textbox(label="Log", lines=8, max_lines=8, interactive=False, autoscroll=True)
    view = [status, loss, qc, log]

    def picked(job_id: str) -> Any:
        return gr.update(choices=studio.job_choices(), value=job_id)

    started_prep = prep_button.click(shows_errors(lambda *a: start_prep(studio, *a).id), [corpus_name, files, folder], job,
                                     api_name="prepare")
    started_train = train_button.click(shows_errors(lambda *a: start_train(studio, *a).id),
                                       [corpus, preset, steps, adapter_name, extra], job, api_name="train")
    for started in (started_prep, started_train):
        started.success(picked, job, job, api_visibility="private")
    show = shows_errors(lambda j: job_view(studio, j))
    job.change(show, job, view, api_visibility="private")
    refresh_button.click(lambda j: (gr.update(choices=studio.job_choices(), value=j), gr.update(choices=corpora(studio))),
                         job, [job, corpus], api_visibility="private").then(show, job, view)
    cancel_button.click(shows_errors(lambda j: studio.jobs.cancel(j).id if j else None), job, job, api_name="cancel")
    gr.Button(visible=False).click(show, job, view, api_name="job_status")
    timer = gr.Timer(1.0)
    timer.tick(show, job, view, show_progress="hidden", concurrency_limit=None, api_visibility="private")
    return {"job": job, "corpus": corpus, "view": view, "show": show}
