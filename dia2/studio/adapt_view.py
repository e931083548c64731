"""The Adapt tab in the page: the prep and train forms, and the chosen job as it runs: a phase line
that never goes silent, the QC figures, the loss plot and the latest lines of the log.

The studio reads a job's progress from what its command writes: data prep's progress bar (in the
job's log) and QC report; the trainer's progress.json (its phase, step and ETA) and metrics.jsonl.
The page polls once a second only while a job runs or waits for the studio to act on its end.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from dia2.studio.adapt import (
    METRICS,
    PROGRESS,
    QC_TEXT,
    adapt_note,
    corpora,
    fitting_preset,
    newest_corpus,
    preset_settings,
    presets,
    qc_report,
    start_prep,
    start_train,
)
from dia2.studio.backend import Studio, job_label, shows_errors
from dia2.studio.jobs import Job

_PREP_BAR = re.compile(r"recordings:\s*\d+%.*?(\d+)/(\d+)")
LOG_LINES = 12
"""Lines of a job's log the page shows: the newest, as many as the box holds."""


def prep_progress(job: Job) -> tuple[int, int]:
    """(recordings prepared, recordings found) from data prep's progress bar; (0, 0) before it."""
    found = _PREP_BAR.findall(job.log_tail(4000))
    return (int(found[-1][0]), int(found[-1][1])) if found else (0, 0)


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


def train_progress(job: Job) -> dict[str, Any]:
    """The trainer's progress.json ({} before it writes one: it is still loading)."""
    try:
        return json.loads((Path(job.details["output"]) / PROGRESS).read_text())
    except (OSError, ValueError):
        return {}


def _left(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f", about {seconds:.0f} s left" if seconds < 120 else f", about {seconds / 60:.0f} min left"


def phase_line(job: Job) -> str:
    """What the job does now, or how it ended, in one line."""
    if job.kind == "prep":
        done, total = prep_progress(job)
        if job.status == "running":
            if not total:
                return "phase: loading the models (speech recognition, Mimi)"
            if done < total:
                return f"phase: preparing recording {done + 1} of {total}"
            return "phase: writing the corpus and its QC report"
        if not total:
            report = qc_report(Path(job.details["output"])) or {}
            done = total = report.get("files", {}).get("found", 0)
        where = f", {done} of {total} recordings" if total else ""
    else:
        record = train_progress(job)
        step, steps = record.get("step", 0), record.get("steps", job.details.get("steps", 0))
        if job.status == "running":
            return _training_phase(record, step, steps)
        where = f", {step} of {steps} steps"
    if job.status == "done":
        return f"phase: done{where}" if job.handled else "phase: finishing (adding the result)"
    return f"phase: {job.status}{where}"


def _training_phase(record: dict[str, Any], step: int, steps: int) -> str:
    phase = record.get("phase")
    if phase == "training":
        return f"phase: step {step} of {steps}{_left(record.get('eta_s'))}"
    if phase == "evaluating":
        return f"phase: evaluating at step {step} of {steps}"
    if phase == "saving":
        return f"phase: saving {'the adapter' if step == steps else 'a checkpoint'} at step {step} of {steps}"
    if phase == "done":
        return f"phase: finishing, {step} of {steps} steps"
    return "phase: loading the base model and the corpus"


def job_view(studio: Studio, job_id: str | None) -> tuple[str, Any, Any, str, str]:
    """(status with the phase line, loss plot, its empty-state note, QC report, log tail) of a job."""
    import gradio as gr
    import pandas as pd

    no_plot = gr.update(visible=False)
    if not job_id:
        return "no job yet: prepare data, then train", no_plot, gr.update(visible=True), "", ""
    job = studio.jobs.get(job_id)
    if job.status == "damaged":
        return f"**{job_label(job)}**\n\n{job.note}", no_plot, gr.update(visible=True), "", ""
    lines = [f"**{job_label(job)}**", phase_line(job)]
    if job.handled:
        lines.append(f"result: {job.note}")
    qc = ""
    if job.kind == "prep":
        try:
            qc = (Path(job.details["output"]) / QC_TEXT).read_text()
        except OSError:
            qc = ""
    losses = train_losses(job) if job.kind == "train" else []
    # An empty plot makes Vega warn in the browser's console ("Infinite extent"): it is shown only with points.
    plot = gr.update(visible=True, value=pd.DataFrame({"step": [r["step"] for r in losses],
                                                        "loss": [r["loss"] for r in losses]})) if losses else no_plot
    log = "\n".join(job.log_tail(4000).rstrip("\n").splitlines()[-LOG_LINES:])
    return "\n\n".join(lines), plot, gr.update(visible=not losses), qc, log


def busy(studio: Studio) -> bool:
    """Whether a job runs, or has ended and waits for the studio to act on it: the page polls then."""
    return any(j.status == "running" or (j.status != "damaged" and not j.handled) for j in studio.jobs.list())


def build_adapt_tab(studio: Studio) -> dict[str, Any]:
    """The tab's components; returns what the app refreshes when the page loads (`on_load`)."""
    import gradio as gr

    gr.Markdown(adapt_note(studio), elem_id="adapt-note")
    chosen_preset, why = fitting_preset(studio)
    with gr.Row():
        with gr.Column(min_width=300):
            gr.Markdown("### 1. Prepare data\nUpload recordings of one speaker, or name a folder of them on this machine.")
            corpus_name = gr.Textbox(label="Corpus name", elem_id="adapt-corpus-name")
            files = gr.File(file_count="multiple", type="filepath", label="Recordings", elem_id="adapt-files")
            folder = gr.Textbox(label="…or a folder on this machine", elem_id="adapt-folder")
            prep_button = gr.Button("Prepare data", variant="primary", elem_id="adapt-prep")
        with gr.Column(min_width=300):
            gr.Markdown("### 2. Train a LoRA adapter")
            corpus = gr.Dropdown(corpora(studio), label="Prepared corpus", elem_id="adapt-corpus",
                                 allow_custom_value=True)
            preset = gr.Dropdown(presets(studio), value=chosen_preset, label="Preset", elem_id="adapt-preset",
                                 allow_custom_value=True)
            gr.Markdown(why, elem_id="adapt-preset-note")
            steps = gr.Number(label="Steps", precision=0, elem_id="adapt-steps", minimum=1,
                              value=preset_settings(studio, chosen_preset).get("steps") if chosen_preset else None,
                              info="the preset's; change it to train more or less")
            adapter_name = gr.Textbox(label="Adapter (voice) name", elem_id="adapt-name")
            extra = gr.Textbox(label="Extra options (key=value ...)", placeholder="optim.lr=1e-3 eval.every=50")
            train_button = gr.Button("Train", variant="primary", elem_id="adapt-train")
    with gr.Row():
        job = gr.Dropdown(studio.job_choices(), label="Job", elem_id="adapt-job", scale=4, min_width=240,
                          allow_custom_value=True)
        refresh_button = gr.Button("Refresh", scale=1, min_width=100)
        cancel_button = gr.Button("Cancel job", variant="stop", scale=1, elem_id="adapt-cancel", min_width=100)
    status = gr.Markdown(elem_id="adapt-status")
    with gr.Row():
        with gr.Column(min_width=300):
            loss = gr.LinePlot(x="step", y="loss", title="Training loss", elem_id="adapt-loss", visible=False)
            no_loss = gr.Markdown("The training loss is plotted here once a run has taken its first step.",
                                  elem_id="adapt-loss-empty")
        qc = gr.Textbox(label="QC report", lines=12, interactive=False, elem_id="adapt-qc", min_width=300)
    # One line more than it holds: room for the sideways scrollbar (studio.css: the lines do not wrap).
    log = gr.Textbox(label="Log (latest lines)", lines=LOG_LINES + 1, max_lines=LOG_LINES + 1, interactive=False,
                     autoscroll=True, elem_id="adapt-log")
    timer = gr.Timer(1.0, active=False)
    seen = gr.State({})  # the job labels and corpora the page shows: the timer sends them again only when they change
    view = [status, loss, no_loss, qc, log]

    def lists(job_id: str | None, corpus_value: str | None, shown: dict) -> tuple[Any, Any, dict]:
        """The job and corpus dropdowns, updated where they changed: a job's label follows its
        status, and a corpus just prepared is offered (and chosen) at once."""
        jobs, names = studio.job_choices(), corpora(studio)
        job_update = gr.update(choices=jobs, value=job_id) if jobs != shown.get("jobs") else gr.update()
        corpus_update = gr.update()
        if names != shown.get("corpora"):
            fresh = [n for n in names if n not in shown.get("corpora", [])]
            corpus_update = gr.update(choices=names, value=fresh[-1] if fresh and shown else corpus_value)
        return job_update, corpus_update, {"jobs": jobs, "corpora": names}

    def poll(job_id: str | None, corpus_value: str | None, shown: dict) -> tuple[Any, ...]:
        return (*job_view(studio, job_id), *lists(job_id, corpus_value, shown), gr.Timer(active=busy(studio)))

    def on_load() -> tuple[Any, ...]:
        """A page (re)loaded: the newest job, the corpora as they are now, polling if a job is busy."""
        jobs, names = studio.job_choices(), corpora(studio)
        return (gr.update(choices=jobs, value=studio.newest_job()), gr.update(choices=names, value=newest_corpus(studio)),
                {"jobs": jobs, "corpora": names}, gr.Timer(active=busy(studio)))

    def started(job_id: str) -> tuple[Any, Any, Any]:
        jobs = studio.job_choices()
        return gr.update(choices=jobs, value=job_id), {"jobs": jobs, "corpora": corpora(studio)}, gr.Timer(active=True)

    started_prep = prep_button.click(shows_errors(lambda *a: start_prep(studio, *a).id), [corpus_name, files, folder],
                                     job, api_name="prepare")
    started_train = train_button.click(shows_errors(lambda *a: start_train(studio, *a).id),
                                       [corpus, preset, steps, adapter_name, extra], job, api_name="train")
    for event in (started_prep, started_train):
        event.success(started, job, [job, seen, timer], api_visibility="private")
    preset.change(lambda p: preset_settings(studio, p).get("steps") if p else None, preset, steps,
                  api_visibility="private")
    show = shows_errors(lambda j: job_view(studio, j))
    job.change(show, job, view, api_visibility="private")
    refresh_button.click(poll, [job, corpus, seen], [*view, job, corpus, seen, timer], api_visibility="private")
    cancel_button.click(shows_errors(lambda j: studio.jobs.cancel(j).id if j else None), job, job, api_name="cancel")
    api_view = shows_errors(lambda j: (lambda v: (v[0], v[1], v[3], v[4]))(job_view(studio, j)))
    gr.Button(visible=False).click(api_view, job, [status, loss, qc, log], api_name="job_status")
    timer.tick(poll, [job, corpus, seen], [*view, job, corpus, seen, timer], show_progress="hidden",
               concurrency_limit=None, api_visibility="private")
    return {"on_load": (on_load, [job, corpus, seen, timer])}
