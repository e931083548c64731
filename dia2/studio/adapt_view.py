"""The Adapt tab in the page: the prep and train forms, and the chosen job as it runs: a phase line
that never goes silent, the QC figures, the loss plot and the latest lines of the log.

The studio reads a job's progress from the files its command writes, where the command's check
named them (the job's details, "writes"): the progress record both commands keep
(`dia2.progress`: the phase, done of total, the time left), data prep's QC report, the trainer's
metrics.jsonl. The page polls once a second only while a job runs or waits for the studio to act
on its end.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dia2.progress import Phase, ProgressRecord, read_progress
from dia2.studio.adapt import (
    adapt_note,
    corpora,
    fitting_preset,
    newest_corpus,
    preset_settings,
    presets,
    start_prep,
    start_train,
    written,
)
from dia2.studio.backend import Studio, job_label, shows_errors
from dia2.studio.jobs import Job

LOG_LINES = 12
"""Lines of a job's log the page shows: the newest, as many as the box holds."""


def progress(job: Job) -> ProgressRecord | None:
    """The job's progress record (None before its command writes one: it is still loading)."""
    path = written(job, "progress")
    return read_progress(path, since=job.started) if path else None


def train_losses(job: Job) -> list[dict[str, Any]]:
    """The trainer's train records so far (metrics.jsonl), one per step."""
    path = written(job, "metrics")
    records = []
    try:
        lines = path.read_text().splitlines() if path else []
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


def _left(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f", about {seconds:.0f} s left" if seconds < 120 else f", about {seconds / 60:.0f} min left"


def phase_line(job: Job) -> str:
    """What the job does now, or how it ended, in one line."""
    record = progress(job)
    if job.kind == "prep":
        if job.status == "running":
            return _preparing_phase(record)
        where = f", {record.done} of {record.total} recordings" if record else ""
    else:
        step, steps = (record.done, record.total) if record else (0, job.details.get("steps", 0))
        if job.status == "running":
            return _training_phase(record, step, steps)
        where = f", {step} of {steps} steps"
    if job.status == "done":
        return f"phase: done{where}" if job.handled else "phase: finishing (adding the result)"
    return f"phase: {job.status}{where}"


def _preparing_phase(record: ProgressRecord | None) -> str:
    if record is None:
        return "phase: loading the models (speech recognition, Mimi)"
    if record.phase == Phase.PREPARING and record.done < record.total:
        return f"phase: preparing recording {record.done + 1} of {record.total}"
    return "phase: writing the corpus and its QC report"


def _training_phase(record: ProgressRecord | None, step: int, steps: int) -> str:
    phase = record.phase if record else None
    if phase == Phase.TRAINING:
        return f"phase: step {step} of {steps}{_left(record.eta_s)}"
    if phase == Phase.EVALUATING:
        return f"phase: evaluating at step {step} of {steps}"
    if phase == Phase.SAVING:
        return f"phase: saving {'the adapter' if step == steps else 'a checkpoint'} at step {step} of {steps}"
    if phase == Phase.DONE:
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
    if job.kind == "prep" and (qc_text := written(job, "qc_text")) is not None:
        try:
            qc = qc_text.read_text()
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
