"""`python -m dia2.api_server`: the OpenAI-compatible speech server.

    python -m dia2.api_server --hf nari-labs/Dia2-2B --port 4123 --slots 16 --cuda-graph
    python -m dia2.api_server --tiny            # the embedded demo model: noise, but every route works

Model flags are dia2-infer's (`--hf`, `--config`, `--weights`, `--device`, `--dtype`,
`--low-vram 8bit|4bit`, `--tiny`; `--merge-adapter` folds one adapter into the base for every
request). `--adapter NAME=PATH_OR_REPO` (repeatable) serves a LoRA adapter as voice NAME, applied
per request by the engine. Voices live in `--voices-dir` (default `voices/`); `--api-key` (or
$DIA2_API_KEY) makes every route but the model and voice menus ask for
`Authorization: Bearer <key>`; `--cors-origin ORIGIN` (repeatable, or *) lets browser pages on
those origins call it. The routes are documented in `dia2.serving.api`; generation defaults are
`GenerationConfig`'s flags (`--cfg`, `--temperature`, ...), which a voice's own defaults and a
request's settings override.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dia2.audio.asr import DEFAULT_WHISPER_MODEL
from dia2.cli import FLAG_ALIASES, PUBLISHED_SPELLING, ModelOptions, check_model_options
from dia2.errors import Dia2Error, report
from dia2.generation.config import GenerationConfig
from dia2.model.adapter_files import AdapterError, check_adapter_path
from dia2.model.assets import HUB_TIMEOUT_S, TINY_MODEL
from dia2.options import (
    FlagParser,
    OptionError,
    add_flags,
    build,
    field_docs,
    flag_values,
    sections,
)

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
    slots: int = 4
    """Requests generated at once (the engine's batch)."""
    max_queued: int = 8
    """Requests waiting for a slot; beyond them clients get 429 with Retry-After."""
    cuda_graph: bool = False
    """Replay each engine frame from CUDA graphs (CUDA only)."""
    max_adapters: int = 8
    """Adapter voices loaded at once."""
    max_adapter_rank: int = 64
    """Highest LoRA rank an adapter voice may have."""
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
    """Which model (`--hf`, `--tiny`, `--low-vram`, ...)."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """Generation defaults of every request (`--cfg`, `--temperature`, ...)."""
    serve: ServeOptions = field(default_factory=ServeOptions)
    """Listening and serving (`--port`, `--slots`, `--adapter`, ...)."""


# The engine's per-request adapters take --adapter; the model's merged one is --merge-adapter.
MODEL_SPELLING = {"adapter": "--merge-adapter", "unmerged_adapter": "--keep-merge-adapter-unmerged"}


def build_parser() -> argparse.ArgumentParser:
    p = FlagParser(prog="python -m dia2.api_server", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    docs = field_docs(ServerOptions)
    spellings = {"model": MODEL_SPELLING, "generation": PUBLISHED_SPELLING, "serve": None}
    for name, section in sections(ServerOptions).items():
        group = p.add_argument_group(name, docs[name])
        add_flags(group, section, dest=f"{name}.", spelling=spellings[name], aliases=FLAG_ALIASES)
    return p


def parse_options(parser: argparse.ArgumentParser, argv: list[str]) -> ServerOptions:
    """Typed, checked options. Repeated --adapter / --voice-alias flags add up."""
    argv = join_repeated(argv, ("--adapter", "--voice-alias", "--cors-origin"))
    raw = flag_values(parser.parse_args(argv))
    serve = raw.setdefault("serve", {})
    if "api_key" not in serve and os.environ.get(API_KEY_ENV):
        serve["api_key"] = os.environ[API_KEY_ENV]
    options = build(ServerOptions, raw)
    if options.model.tiny and ("hf" in raw.get("model", {}) or options.model.config or options.model.weights):
        raise OptionError("--tiny is --hf tiny, the embedded demo model; it cannot be combined with --hf/--config/--weights")
    check_model_options(options.model, MODEL_SPELLING)
    check_adapter_items(options.serve.adapter)
    for item in options.serve.voice_alias:
        name, _, value = item.partition("=")
        if not name or not value:
            raise OptionError(f"--voice-alias {item!r}: write OPENAI_NAME=VOICE, e.g. --voice-alias alloy=me")
    s = options.serve
    if not 0 < s.port < 65536:
        raise OptionError(f"--port {s.port}: use 1-65535")
    if min(s.slots, s.max_input_chars, s.max_adapters, s.max_adapter_rank) < 1 or s.max_queued < 0 or s.max_upload_mb <= 0:
        raise OptionError("--slots, --max-input-chars, --max-adapters and --max-adapter-rank must be >= 1, "
                          "--max-queued >= 0, --max-upload-mb > 0")
    if not s.hub_timeout > 0:
        raise OptionError(f"--hub-timeout {s.hub_timeout}: give the seconds to wait for the Hub, above 0")
    for origin in s.cors_origin:
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            raise OptionError(f"--cors-origin {origin}: give an origin such as https://chat.example.com "
                              "(scheme and host, no path), or *")
    return options


def check_adapter_items(items: Sequence[str]) -> None:
    """Refuse, before anything loads, an `--adapter NAME=PATH_OR_REPO` that is malformed or names a
    missing or incomplete local folder (a Hub repo id is checked when it is fetched)."""
    for item in items:
        name, _, value = item.partition("=")
        if not name or not value:
            raise OptionError(f"--adapter {item!r}: write NAME=PATH, e.g. --adapter my-voice=runs/voice/adapter")
        try:
            check_adapter_path(value, f"--adapter {name}=")
        except AdapterError as exc:
            raise OptionError(str(exc)) from None


def join_repeated(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """`--adapter a=x --adapter b=y` -> `--adapter a=x,b=y` (the options module keeps the last value)."""
    out, seen = [], {}
    it = iter(range(len(argv)))
    for i in it:
        arg = argv[i]
        flag, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if flag in flags:
            if not eq:
                if i + 1 >= len(argv):
                    out.append(arg)
                    continue
                value = argv[i + 1]
                next(it, None)
            if flag in seen:
                out[seen[flag]] += "," + value
            else:
                seen[flag] = len(out) + 1
                out += [flag, value]
            continue
        out.append(arg)
    return out


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
    from dia2.serving.engine import Engine, EngineConfig
    from dia2.serving.voices import VoiceStore

    m, s = options.model, options.serve
    tts = load_tts(m, "serving")
    engine = Engine(tts, EngineConfig(slots=s.slots, max_queued=s.max_queued, cuda_graph=s.cuda_graph,
                                      max_adapters=s.max_adapters, max_adapter_rank=s.max_adapter_rank))
    aliases = dict(item.split("=", 1) for item in s.voice_alias)
    make_prefix = prefix_maker(tts, s.whisper_model)  # Whisper loads in the background: checked at start
    voices = VoiceStore(s.voices_dir, make_prefix, sample_rate=tts.codec.sample_rate,
                        max_upload_bytes=int(s.max_upload_mb * 2**20), aliases=aliases)
    offer_adapters(voices, s.adapter)
    adapters = VoiceAdapters(engine, hub_timeout_s=s.hub_timeout)
    load_stored_adapters(voices, adapters)
    engine.start()
    settings = ApiSettings(model_name=Path(m.source).name if m.source != TINY_MODEL else "dia2-tiny", api_key=s.api_key,
                           generation=options.generation, max_input_chars=s.max_input_chars, cors_origins=s.cors_origin)
    return create_app(engine, voices, settings, adapters, whisper=make_prefix.status)


def load_tts(m: ModelOptions, purpose: str):
    """The Dia2 runtime the model options name (a --adapter given with the model is merged in)."""
    from dia2.generation.runtime import Dia2

    if m.source == TINY_MODEL:
        logger.warning("%s the embedded tiny demo model: random, untrained weights (noise, not speech)", purpose)
    return Dia2.from_repo(
        m.source, device=m.device, dtype=m.torch_dtype, config_path=m.config, weights_path=m.weights,
        tokenizer=m.tokenizer, mimi=m.mimi, low_vram=m.low_vram, adapter=m.adapter, merge_adapter=True,
    )


def offer_adapters(voices, items: Sequence[str]) -> None:
    """Store each `--adapter NAME=PATH` as an adapter voice (replacing an older one of that name)."""
    for item in items:
        name, path = item.split("=", 1)
        if name in voices.names() and voices.get(name).prefix is not None:
            raise OptionError(f"--adapter {item}: the voices folder has a recorded voice named '{name}': "
                              "offer the adapter under another name")
        voices.add_adapter(name, path, replace=True)


def prefix_maker(tts, whisper_model: str):
    """make_prefix for a voice store over `tts` (the server's and the studio's): Whisper loaded in
    the background from now, a given transcript used without it (`dia2.serving.prefix_maker`)."""
    from dia2.serving.prefix_maker import PrefixMaker

    return PrefixMaker(tts, whisper_model)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        options = parse_options(parser, sys.argv[1:] if argv is None else argv)
    except OptionError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return serve(options)
    except (Dia2Error, OSError) as exc:
        return report("dia2.api_server", exc)


if __name__ == "__main__":
    sys.exit(main())
