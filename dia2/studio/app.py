"""`python gradio_app.py` / `dia2-studio`: the Dia2 studio in the browser.

    python gradio_app.py --model nari-labs/Dia2-2B --voices voices/   # open http://127.0.0.1:7860
    python gradio_app.py --tiny                                        # the embedded demo model (noise)

Tabs: Speak (a script, a voice per speaker, an adapter; the audio plays while it is generated,
with a Stop button and the seed of every take), Voices (make a voice from a recording, its
corrected transcript aligned to the heard words; list, play, delete), Adapt (data prep and LoRA
training in the background, with a phase line, QC summary and a live loss plot), Compare (one
script and seed, several configurations side by side, scored by dia2.evaluation when installed).

Model flags are dia2-infer's (`--model` or `--hf`, `--config`, `--weights`, `--tokenizer`,
`--mimi`, `--device`, `--dtype`, `--low-vram`, `--tiny`; `--merge-adapter` folds one adapter into
the base); generation flags (`--cfg`, `--temperature`, `--max-frames`...) set the page's
defaults; the engine's (`--slots`, `--max-queued`, `--cuda-graph`, ...) are the speech server's.
`--voices` is the speech server's voices folder: voices and trained adapters made here are the
server's too. Nothing reaches the network (Gradio's analytics are off) unless `--share` is given.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

# Before gradio is imported anywhere: it reads this once.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from dia2.audio.asr import DEFAULT_WHISPER_MODEL
from dia2.errors import Dia2Error
from dia2.generation.config import GenerationConfig
from dia2.launch.command import run_main
from dia2.launch.flags import (
    FLAG_ALIASES,
    SERVED_MODEL_SPELLING,
    SERVED_SECTION_SPELLINGS,
    adapter_items,
    check_port,
    join_repeated,
)
from dia2.launch.model import ModelOptions, check_served_model, check_tiny
from dia2.options import (
    FlagParser,
    OptionError,
    add_section_flags,
    build,
    flag_values,
)
from dia2.serving.config import EngineConfig
from dia2.studio.backend import ScorerFactory, Studio

logger = logging.getLogger("dia2.studio")

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "train"
CSS = Path(__file__).with_name("studio.css")


@dataclass(frozen=True)
class StudioSection:
    """Where the studio listens, and the folders it works in."""

    voices: Path = Path("voices")
    """The speech server's voices folder: voices and trained adapters made here are stored in it."""
    adapter: tuple[str, ...] = ()
    """NAME=PATH_OR_REPO: offer a PEFT LoRA adapter as voice NAME (repeat the flag for more)."""
    work: Path = Path("studio")
    """Folder of the studio's jobs, corpora, training runs and generated audio."""
    presets: Path = PRESETS
    """Folder of training presets (YAML) the Adapt tab offers."""
    whisper_model: str = DEFAULT_WHISPER_MODEL
    """faster-whisper model (size name or local folder) that transcribes voices and data-prep recordings."""
    host: str = "127.0.0.1"
    """Address to listen on (0.0.0.0: every interface)."""
    port: int = 7860
    """Port to listen on."""
    share: bool = False
    """Also publish the page through a public gradio.live link (reaches the network)."""


@dataclass(frozen=True)
class StudioOptions:
    """The studio: the model, the page's generation defaults, and where it works."""

    model: ModelOptions = field(default_factory=ModelOptions)
    """Which model (`--model`, `--tiny`, `--low-vram`, ...)."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """Generation defaults of the page (`--cfg`, `--temperature`, `--max-frames`, ...)."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """The engine: utterances generated at once (Compare's configurations, several pages) and waiting (`--slots`, ...)."""
    studio: StudioSection = field(default_factory=StudioSection)
    """Folders and listening (`--voices`, `--work`, `--port`, ...)."""


def build_parser() -> argparse.ArgumentParser:
    p = FlagParser(prog="dia2-studio", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_section_flags(p, StudioOptions, spellings=SERVED_SECTION_SPELLINGS, aliases=FLAG_ALIASES)


def parse_options(parser: argparse.ArgumentParser, argv: list[str]) -> StudioOptions:
    """Typed, checked options; repeated --adapter flags add up."""
    raw = flag_values(parser.parse_args(join_repeated(argv, ("--adapter",))))
    check_tiny(raw.get("model", {}))
    options = build(StudioOptions, raw)
    check_served_model(options.model, SERVED_MODEL_SPELLING)
    s = options.studio
    adapter_items(s.adapter)
    if "presets" in raw.get("studio", {}) and not s.presets.is_dir():  # without a checkout's, Adapt says how to train
        raise OptionError(f"--presets {s.presets}: not a folder; give a folder of training presets (YAML), like configs/train/")
    check_port(s.port)
    if s.voices.exists() and not s.voices.is_dir():
        raise OptionError(f"--voices {s.voices} is a file: give the voices folder (it is created if missing)")
    return options


def build_app(options: StudioOptions, *, scorer: ScorerFactory | None = None, studio: Studio | None = None):
    """The studio page (gr.Blocks) over a loaded model. scorer: builds Compare's clip scorer from
    reference waveforms (default: dia2.evaluation's ClipScorer, when installed)."""
    import gradio as gr

    from dia2.studio.adapt import job_ended
    from dia2.studio.adapt_view import build_adapt_tab
    from dia2.studio.compare import build_compare_tab, default_scorer
    from dia2.studio.speak import (
        NO_VOICE,
        adapter_choices,
        build_speak_tab,
        voice_choices,
    )
    from dia2.studio.voices_tab import build_voices_tab

    studio = studio or Studio(options, job_ended)
    scorer = scorer or default_scorer(options.studio.whisper_model)
    prefixes = lambda: [NO_VOICE, *studio.prefix_voices()]
    with gr.Blocks(title="Dia2 studio", analytics_enabled=False) as demo:
        gr.Markdown("# Dia2 studio")
        if studio.random_demo:
            gr.Markdown(f"**{RANDOM_MODEL_BANNER}**", elem_id="model-banner")
        with gr.Tab("Speak") as speak_tab:
            speak = build_speak_tab(studio)
        with gr.Tab("Voices"):
            voices = build_voices_tab(studio, [(speak["voice_1"], lambda: voice_choices(studio)),
                                               (speak["voice_2"], lambda: voice_choices(studio))])
        with gr.Tab("Adapt"):
            adapt = build_adapt_tab(studio)
        with gr.Tab("Compare") as compare_tab:
            compare = build_compare_tab(studio, scorer, prefixes, lambda: adapter_choices(studio))
        # Voices and adapters change in other tabs, other pages and background jobs.
        speak_tab.select(lambda: [gr.update(choices=voice_choices(studio))] * 2 + [gr.update(choices=adapter_choices(studio))],
                         None, [speak["voice_1"], speak["voice_2"], speak["adapter"]], api_visibility="private")
        compare_tab.select(lambda: (gr.update(choices=prefixes()), gr.update(choices=adapter_choices(studio))),
                           None, [compare["voice"], compare["adapter"]], api_visibility="private")
        # A reload shows the newest job (running or not), the corpora and the stored voices as they are now.
        demo.load(adapt["on_load"][0], None, adapt["on_load"][1], api_visibility="private")
        demo.load(voices["listing"], None, voices["listed"], api_name="list_voices")
    demo.studio = studio
    return demo


RANDOM_MODEL_BANNER = ("This studio runs the embedded tiny demo model, with random weights: its audio is noise. "
                       "Load a real model with --model, e.g. python gradio_app.py --model nari-labs/Dia2-2B")


def launch(demo, options: StudioOptions, **kwargs):
    """Serve the page (returns at once with prevent_thread_lock=True: (app, local url, share url))."""
    s = options.studio
    css = CSS.read_text() if CSS.is_file() else None
    return demo.queue(default_concurrency_limit=options.engine.slots).launch(
        server_name=s.host, server_port=s.port, share=s.share, css=css, quiet=True,
        allowed_paths=[str(Path(s.work).resolve()), str(Path(s.voices).resolve())], footer_links=["api"], **kwargs,
    )


def serve(options: StudioOptions) -> int:
    """Load the model, build the page and serve it."""
    launch(build_app(options), options)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run_main("dia2-studio", lambda: parse_options(parser, sys.argv[1:] if argv is None else argv), serve,
                    parser=parser, log_level=logging.INFO, errors=(Dia2Error, OSError))


if __name__ == "__main__":
    sys.exit(main())
