"""`python -m dia2.api_server`: the OpenAI-compatible speech server.

    python -m dia2.api_server --model nari-labs/Dia2-2B --port 4123 --slots 16 --cuda-graph
    python -m dia2.api_server --tiny            # the embedded demo model: noise, but every route works

Model flags are dia2-infer's (`--model` or `--hf`, `--config`, `--weights`, `--device`, `--dtype`,
`--low-vram 8bit|4bit`, `--tiny`; `--merge-adapter` folds one adapter into the base for every
request). `--adapter NAME=PATH_OR_REPO` (repeatable) serves a LoRA adapter as voice NAME, applied
per request by the engine. Voices live in `--voices-dir` (default `voices/`); `--api-key` (or
$DIA2_API_KEY) makes every route but the model and voice menus ask for
`Authorization: Bearer <key>`; `--cors-origin ORIGIN` (repeatable, or *) lets browser pages on
those origins call it. The routes are documented in `dia2.serving.api`; generation defaults are
`GenerationConfig`'s flags (`--cfg`, `--temperature`, ...), which a voice's own defaults and a
request's settings override. The engine's flags (`--slots`, `--max-queued`, `--cuda-graph`, ...)
are `dia2.serving.config.EngineConfig`'s fields, with its defaults.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

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
    named_items,
)
from dia2.launch.model import ModelOptions, check_served_model, check_tiny, load_tts, offer_adapters
from dia2.model.assets import HUB_TIMEOUT_S, TINY_MODEL
from dia2.options import (
    FlagParser,
    OptionError,
    add_section_flags,
    build,
    flag_values,
)
from dia2.serving.config import EngineConfig

logger = logging.getLogger("dia2.api_server")

API_KEY_ENV = "DIA2_API_KEY"


@dataclass(frozen=True)
class ServeOptions:
    """Where and how the server listens, and what it serves."""

    host: str = "127.0.0.1"
    """Address to listen on (0.0.0.0: every interface)."""
    port: int = 4123
    """Port to listen on."""
    api_key: str | None = None
    """Key clients must send as 'Authorization: Bearer <key>' (default: $DIA2_API_KEY; none: open)."""
    voices_dir: Path = Path("voices")
    """Folder of stored voices; audio files dropped into it become voices (within seconds, while serving)."""
    adapter: tuple[str, ...] = ()
    """NAME=PATH_OR_REPO: serve a PEFT LoRA adapter as voice NAME (repeat the flag for more)."""
    voice_alias: tuple[str, ...] = ()
    """OPENAI_NAME=VOICE: answer an OpenAI voice name (alloy, echo, ...) with a stored voice."""
    cors_origin: tuple[str, ...] = ()
    """Origin browser pages may call the API from, e.g. https://chat.example.com (repeat the flag
    for more; * for any; none: no CORS)."""
    max_upload_mb: float = 20.0
    """Largest voice upload accepted, in MB."""
    max_input_chars: int = 20_000
    """Longest speech input accepted, in characters."""
    whisper_model: str = DEFAULT_WHISPER_MODEL
    """faster-whisper model that transcribes uploaded voices (loaded at start; if it cannot be, only
    uploads with a transcript are taken)."""
    hub_timeout: float = HUB_TIMEOUT_S
    """Seconds to wait for the Hugging Face Hub when fetching an adapter voice (then 504)."""
    log_level: str = "info"
    """uvicorn's log level."""


@dataclass(frozen=True)
class ServerOptions:
    """A speech server: the model, generation defaults, and serving."""

    model: ModelOptions = field(default_factory=ModelOptions)
    """Which model (`--model`, `--tiny`, `--low-vram`, ...)."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """Generation defaults of every request (`--cfg`, `--temperature`, ...)."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """The engine: requests generated at once and waiting, adapters, CUDA graphs (`--slots`, `--max-queued`, ...)."""
    serve: ServeOptions = field(default_factory=ServeOptions)
    """Listening and serving (`--port`, `--adapter`, `--api-key`, ...)."""


def build_parser() -> argparse.ArgumentParser:
    p = FlagParser(prog="python -m dia2.api_server", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_section_flags(p, ServerOptions, spellings=SERVED_SECTION_SPELLINGS, aliases=FLAG_ALIASES)


def parse_options(parser: argparse.ArgumentParser, argv: list[str]) -> ServerOptions:
    """Typed, checked options. Repeated --adapter / --voice-alias flags add up."""
    argv = join_repeated(argv, ("--adapter", "--voice-alias", "--cors-origin"))
    raw = flag_values(parser.parse_args(argv))
    serve = raw.setdefault("serve", {})
    if "api_key" not in serve and os.environ.get(API_KEY_ENV):
        serve["api_key"] = os.environ[API_KEY_ENV]
    check_tiny(raw.get("model", {}))
    options = build(ServerOptions, raw)
    check_served_model(options.model, SERVED_MODEL_SPELLING)
    s = options.serve
    adapter_items(s.adapter)
    voice_aliases(s.voice_alias)
    check_port(s.port)
    if s.max_input_chars < 1:
        raise OptionError(f"--max-input-chars {s.max_input_chars}: use 1 or more")
    if not s.max_upload_mb > 0:
        raise OptionError(f"--max-upload-mb {s.max_upload_mb}: give the largest upload in MB, above 0")
    if not s.hub_timeout > 0:
        raise OptionError(f"--hub-timeout {s.hub_timeout}: give the seconds to wait for the Hub, above 0")
    for origin in s.cors_origin:
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            raise OptionError(f"--cors-origin {origin}: give an origin such as https://chat.example.com "
                              "(scheme and host, no path), or *")
    return options


def voice_aliases(items: tuple[str, ...]) -> dict[str, str]:
    """OpenAI voice name -> stored voice, from the `--voice-alias OPENAI_NAME=VOICE` items."""
    return dict(named_items(items, "--voice-alias", "OPENAI_NAME=VOICE", "alloy=me"))


def serve(options: ServerOptions) -> int:
    """Load the model, start the engine and serve until interrupted."""
    import uvicorn

    app = build_app(options)
    uvicorn.run(app, host=options.serve.host, port=options.serve.port, log_level=options.serve.log_level)
    return 0


def build_app(options: ServerOptions):
    """The FastAPI app with a started engine and the voice store (what `serve` runs)."""
    from dia2.serving.api import (
        ApiSettings,
        VoiceAdapters,
        create_app,
        load_stored_adapters,
    )
    from dia2.serving.engine import Engine
    from dia2.serving.prefix_maker import PrefixMaker
    from dia2.serving.voices import VoiceStore

    m, s = options.model, options.serve
    tts = load_tts(m, "serving")
    engine = Engine(tts, options.engine)
    aliases = voice_aliases(s.voice_alias)
    make_prefix = PrefixMaker(tts, s.whisper_model)  # Whisper loads in the background: checked at start
    voices = VoiceStore(s.voices_dir, make_prefix, sample_rate=tts.codec.sample_rate,
                        max_upload_bytes=int(s.max_upload_mb * 2**20), aliases=aliases)
    offer_adapters(voices, s.adapter)
    adapters = VoiceAdapters(engine, hub_timeout_s=s.hub_timeout)
    load_stored_adapters(voices, adapters)
    engine.start()
    settings = ApiSettings(model_name=Path(m.source).name if m.source != TINY_MODEL else "dia2-tiny", api_key=s.api_key,
                           generation=options.generation, max_input_chars=s.max_input_chars, cors_origins=s.cors_origin)
    return create_app(engine, voices, settings, adapters, whisper=make_prefix.status)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run_main("dia2.api_server", lambda: parse_options(parser, sys.argv[1:] if argv is None else argv), serve,
                    parser=parser, log_level=logging.INFO, errors=(Dia2Error, OSError))


if __name__ == "__main__":
    sys.exit(main())
