"""The Dia2 studio (Gradio): speak, make voices, adapt a voice and compare, in the browser.

`python gradio_app.py` or `dia2-studio` (`dia2.studio.app.main`); `build_app(options)` gives the
page as a `gr.Blocks`. Nothing is imported here: the job runner starts without loading torch.

Modules: `app` (options, the page, launch) builds on `runtime` (the `Studio` every tab shares:
model, engine, voices, jobs; page-facing errors), with one module per tab: `speak`, `voices_tab`,
`adapt` (data prep and training jobs, run as the commands `dia2-prep` and `finetune/train.py`
after their `--check`) with `adapt_view` (its page), and `compare`. `jobs` keeps background jobs
on disk; `runner` (standard library only) runs each one.
"""
