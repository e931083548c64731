"""The Dia2 studio (Gradio): speak, make voices, adapt a voice and compare, in the browser.

`python gradio_app.py` or `dia2-studio` (`dia2.studio.app.main`); `build_app(options)` gives the
page as a `gr.Blocks`. Nothing is imported here: the job runner starts without loading torch.

    app.py            the command and the page
    backend.py        what every tab shares: the model on a serving engine, voices, jobs, errors
    speak.py, voices_tab.py, adapt_view.py, compare.py
                      the Speak, Voices, Adapt and Compare tabs
    adapt.py          the Adapt tab's jobs: data prep, then training, run as the commands
                      `dia2-prep` and `finetune/train.py` after their `--check`
    jobs.py, runner.py
                      background jobs whose state lives on disk, and the process (standard
                      library only) that runs one
"""
