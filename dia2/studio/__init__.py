"""The Dia2 studio (Gradio): speak, make voices, adapt a voice and compare, in the browser.

`python gradio_app.py` or `dia2-studio` (`dia2.studio.app.main`); `build_app(options)` gives the
page as a `gr.Blocks`. Nothing is imported here: the job runner starts without loading torch.
"""
