"""The OpenAI-compatible speech API over the serving engine (FastAPI).

Routes (OpenAI's contract where it has one):
- `POST /v1/audio/speech`: `model`, `input` (`[S1]`/`[S2]` dialogue; plain text is speaker 1),
  `voice` (a name or `{"id": name}`), `response_format` (mp3 by default, opus, aac, flac, wav,
  pcm), `speed` (0.25-4, tempo without pitch change), `stream_format` (`audio`: the encoded
  file, streamed as it is generated; `sse`: `speech.audio.delta` events with base64 audio and
  the words they start, then `speech.audio.done` with usage), `instructions` (accepted and
  ignored: Dia2 takes no style prompt; a voice sets the style), and the extensions `seed`,
  `cfg`, `temperature`, `top_k` (each wins over the voice's default, which wins over the server's).
- `POST /v1/audio/speech/captioned`: the same request, answered with JSON: base64 audio and
  every word's start time.
- `GET /v1/models`, `GET /v1/models/{id}`, `GET /v1/audio/models`, `GET /v1/audio/voices`: open
  (Open WebUI fills its menus from them without a key).
- `GET|POST /v1/voices`, `PATCH|DELETE /v1/voices/{name}`: stored voices (`dia2.serving.voices`;
  an upload and a PATCH set the voice's defaults `seed`, `cfg`, `temperature`, `top_k`); servers
  sharing a voices folder serve the same voices (docs/serving-replicas.md), and audio files
  dropped into the folder become voices within seconds.
- `GET /health` (slots, queue, Whisper), `GET /metrics` (Prometheus: `dia2.serving.operations`).

Errors have OpenAI's shape and codes (`dia2.serving.openai_errors`). Generation runs in the
engine's thread and audio is decoded and encoded in worker threads, never in the event loop; a
waiting request holds no thread, and a client that disconnects cancels its request, queued or
not (`dia2.serving.speech`).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from anyio import CapacityLimiter, to_thread
from fastapi import Depends, FastAPI, File, Form, UploadFile
from fastapi import Request as HttpRequest
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from dia2.audio.encode import AudioEncoder
from dia2.generation.config import GenerationConfig
from dia2.generation.voice import MAX_SEED, VoiceDefaults
from dia2.model.assets import hub_repo_id_problem
from dia2.serving.engine import Engine
from dia2.serving.openai_errors import ApiError, add_error_handlers
from dia2.serving.operations import Metrics, add_operations, allowed_methods
from dia2.serving.requests import Request
from dia2.serving.speech import (
    Speech,
    SpeechRequest,
    SpeechResponse,
    cancel_when_gone,
    captioned,
    stream_audio,
    stream_sse,
)
from dia2.serving.voice_adapters import VoiceAdapters, load_stored_adapters  # noqa: F401 - api_server's and the studio's
from dia2.serving.voices import SCAN_SECONDS, StoredVoice, UploadTooLarge, VoiceNotFound, VoiceStore

SPEECH_MODELS = ("dia2", "tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-12-15")
"""Model ids a request may name: all are this server's one Dia2 (clients that only know
OpenAI's names work)."""
CLIENT_GONE = 499
"""Status of the answer to a client that went away before it (nobody reads it; nginx's code)."""
PREPARE_THREADS = 2
"""Speech requests checked at once in worker threads (voice looked up, script parsed): a burst of
requests takes turns instead of flooding the interpreter's lock while streams are decoded."""


@dataclass(frozen=True)
class ApiSettings:
    """What the API needs besides the engine and the voices."""

    model_name: str = "dia2"
    """The loaded model, as /v1/models and /health report it."""
    api_key: str | None = None
    """Bearer key every route but the open ones requires (None: any key, or none, is accepted)."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """Generation defaults of every request (a voice's defaults and a request's settings win over them)."""
    max_input_chars: int = 20_000
    """Longest `input` accepted (longer scripts than the context are spoken in parts)."""
    retry_after_s: int = 2
    """Seconds a refused (429) client is told to wait."""
    cors_origins: tuple[str, ...] = ()
    """Origins browsers may call the API from ("*": any; none: no CORS headers)."""
    scan_seconds: float = SCAN_SECONDS
    """How often the voices folder is looked at for dropped-in files."""


class VoiceChange(BaseModel):
    """PATCH /v1/voices/{name}: the defaults to set (null unsets one; a field left out is kept)."""

    model_config = ConfigDict(extra="forbid")

    seed: int | None = Field(None, ge=0, lt=MAX_SEED)
    cfg: float | None = Field(None, gt=0)
    temperature: float | None = Field(None, ge=0)
    top_k: int | None = Field(None, ge=0)


def create_app(engine: Engine, voices: VoiceStore, settings: ApiSettings | None = None,
               adapters: VoiceAdapters | None = None, whisper: Callable[[], dict] | None = None) -> FastAPI:
    """The API over a running engine and a voice store (`adapters`: the voices' adapters already
    loaded into the engine; none when not given; `whisper()`: the transcriber's state for /health)."""
    settings = settings or ApiSettings()
    adapters = adapters or VoiceAdapters(engine)
    voices.watch(adapters.changed)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        voices.start_scanning(settings.scan_seconds)
        try:
            yield
        finally:
            voices.stop_scanning()

    app = FastAPI(title="Dia2 speech server", version="1", lifespan=lifespan)
    app.state.engine, app.state.voices = engine, voices
    metrics = Metrics(engine)
    # Threads for the streams' decoding (a slot's request, and the one after it in the same slot)
    # and for checking requests, apart from the pool that uploads and voice listings use.
    stream_threads, prepare_threads = CapacityLimiter(2 * engine.config.slots), CapacityLimiter(PREPARE_THREADS)

    def answered(error: ApiError) -> None:
        metrics.errors.labels(str(error.status)).inc()
        if error.status == 429:
            metrics.outcome("refused")

    add_error_handlers(app, settings.retry_after_s, answered, lambda request: allowed_methods(app, request.scope))
    add_operations(app, settings.cors_origins)

    async def authorized(request: HttpRequest) -> None:
        if settings.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # The scheme is case-insensitive (RFC 9110); the key is compared in constant time.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise ApiError(401, "invalid or missing API key: send 'Authorization: Bearer <key>'", "authentication_error",
                           code="invalid_api_key")

    def model_entry(model_id: str) -> dict:
        return {"id": model_id, "object": "model", "created": created, "owned_by": "dia2"}

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> dict:
        state = {"status": "ok", "model": settings.model_name, "slots": engine.config.slots, "busy": engine.busy_slots,
                 "queued": engine.queued, "max_queued": engine.config.max_queued}
        return {**state, "whisper": whisper()} if whisper is not None else state

    @app.api_route("/metrics", methods=["GET", "HEAD"])
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.api_route("/v1/models", methods=["GET", "HEAD"])
    async def models() -> dict:
        return {"object": "list", "data": [model_entry(m) for m in _model_ids(settings)]}

    @app.api_route("/v1/models/{model_id}", methods=["GET", "HEAD"])
    async def model(model_id: str) -> dict:
        if model_id not in _model_ids(settings):
            raise ApiError(404, _unknown_model(model_id, settings), param="model", code="model_not_found")
        return model_entry(model_id)

    @app.api_route("/v1/audio/models", methods=["GET", "HEAD"])
    async def audio_models() -> dict:
        return {"models": [{"id": m} for m in _model_ids(settings)]}

    # Reading the store first picks up other replicas' changes (a lock wait, voice loads,
    # adapter unloads): in a worker thread, so the event loop keeps every stream going.
    @app.api_route("/v1/audio/voices", methods=["GET", "HEAD"])
    async def audio_voices() -> dict:
        names = await run_in_threadpool(voices.names)
        return {"voices": [{"id": n, "name": n} for n in names]}

    @app.api_route("/v1/voices", methods=["GET", "HEAD"], dependencies=[Depends(authorized)])
    async def list_voices() -> dict:
        return {"voices": [_voice_record(v) for v in await run_in_threadpool(voices.list)]}

    @app.post("/v1/voices", dependencies=[Depends(authorized)], status_code=201)
    async def add_voice(
        name: str = Form(...), file: UploadFile | None = File(None), speaker_2: UploadFile | None = File(None),
        transcript: str | None = Form(None), adapter: str | None = Form(None), replace: bool = Form(False),
        seed: int | None = Form(None), cfg: float | None = Form(None), temperature: float | None = Form(None),
        top_k: int | None = Form(None),
    ) -> dict:
        defaults = VoiceDefaults(seed=seed, cfg=cfg, temperature=temperature, top_k=top_k)
        first, second = await _read_upload(file, "file", voices), await _read_upload(speaker_2, "speaker_2", voices)
        stored = await run_in_threadpool(_add_voice, voices, adapters, name, first, second, transcript, adapter,
                                         replace, defaults)
        return _voice_record(stored)

    @app.patch("/v1/voices/{name}", dependencies=[Depends(authorized)])
    async def change_voice(name: str, body: VoiceChange) -> dict:
        changes = {key: getattr(body, key) for key in body.model_fields_set}
        return _voice_record(await run_in_threadpool(voices.set_defaults, name, changes))

    @app.delete("/v1/voices/{name}", dependencies=[Depends(authorized)])
    async def delete_voice(name: str) -> dict:
        await run_in_threadpool(voices.delete, name)  # its adapter is unloaded through `adapters.changed`
        return {"id": name, "deleted": True}

    async def submit(body: SpeechRequest) -> Speech:
        checked = await to_thread.run_sync(_prepare, engine, voices, settings, body, limiter=prepare_threads)
        stored, config, words = checked
        # An adapter voice another server added is loaded here first (seconds): in the shared pool.
        adapter = await run_in_threadpool(adapters.key, stored) if stored.adapter is not None else None
        request = Request(body.input, config, stored.prefix, adapter)
        return Speech(engine.submit(request), engine.tts.codec, words, metrics, stream_threads)

    @app.post("/v1/audio/speech", dependencies=[Depends(authorized)], response_model=None)
    async def speech(body: SpeechRequest, http: HttpRequest) -> Response:
        encoder = AudioEncoder(body.response_format, engine.tts.codec.sample_rate, body.speed)  # before a slot is taken
        speaking = await submit(body)
        try:
            async with cancel_when_gone(http, speaking.handle):
                started = await speaking.begin()
        except BaseException:
            speaking.end()
            raise
        if not started:
            speaking.end()
            return Response(status_code=CLIENT_GONE)
        if body.stream_format == "sse":
            return SpeechResponse(stream_sse(speaking, encoder, body.speed), speaking, "text/event-stream")
        return SpeechResponse(stream_audio(speaking, encoder), speaking, encoder.content_type)

    @app.post("/v1/audio/speech/captioned", dependencies=[Depends(authorized)], response_model=None)
    async def speech_captioned(body: SpeechRequest, http: HttpRequest) -> Response | dict:
        # A format or speed the encoder cannot take is refused before a slot is taken.
        AudioEncoder(body.response_format, engine.tts.codec.sample_rate, body.speed)
        speaking = await submit(body)
        try:
            async with cancel_when_gone(http, speaking.handle):
                result = None
                if await speaking.begin():
                    result = await captioned(speaking, body.response_format, engine.tts.codec.sample_rate, body.speed)
        finally:
            speaking.end()
        return result if result is not None else Response(status_code=CLIENT_GONE)

    return app


def _model_ids(settings: ApiSettings) -> list[str]:
    return list(dict.fromkeys([settings.model_name, *SPEECH_MODELS]))


def _unknown_model(model_id: str, settings: ApiSettings) -> str:
    return f"model '{model_id}' does not exist here: use one of {', '.join(_model_ids(settings))}"


async def _read_upload(upload: UploadFile | None, field_name: str, voices: VoiceStore) -> bytes | None:
    """An uploaded file's bytes; one past the size limit is refused without reading it whole."""
    if upload is None:
        return None
    data = await upload.read(voices.max_upload_bytes + 1)
    if len(data) > voices.max_upload_bytes:
        raise UploadTooLarge(f"{upload.filename or 'the upload'} is over the {voices.max_upload_bytes / 2**20:g} MiB limit: "
                             "send a shorter clip or a compressed format", param=field_name)
    return data


def _voice_record(v: StoredVoice) -> dict:
    return {"id": v.name, "name": v.name, "speakers": v.speakers, "transcript": v.transcript,
            "adapter": v.adapter is not None, "prefix": v.prefix is not None, "builtin": v.builtin,
            "defaults": v.defaults.as_dict()}


def _add_voice(voices: VoiceStore, adapters: VoiceAdapters, name: str, first: bytes | None, second: bytes | None,
               transcript: str | None, adapter: str | None, replace: bool, defaults: VoiceDefaults) -> StoredVoice:
    voices.check_free(name, replace)  # a reserved or taken name is said first
    if first is None and adapter is None:
        raise ApiError(400, "a voice needs a recording ('file') or an adapter ('adapter'), or both", param="file")
    if adapter is not None and hub_repo_id_problem(adapter) is not None:
        # A client must not make the server read its disk: local adapters are the operator's (--adapter).
        raise ApiError(400, f"adapter '{adapter}': give a Hub repo id like 'user/my-voice-lora' (local adapter "
                       "folders are served with the server's --adapter NAME=PATH flag)", param="adapter")
    key = adapters.load(adapter) if adapter is not None else None  # refused before anything is stored
    try:
        if first is None:
            stored = voices.add_adapter(name, adapter, replace=replace, local_adapter=False, defaults=defaults)
        else:
            stored = voices.add(name, first, second, transcript=transcript, adapter=adapter, replace=replace,
                                local_adapter=False, defaults=defaults)
    except BaseException:
        if key is not None:
            adapters.retire(key)
        raise
    adapters.bind(name, key, stored.revision)
    return stored


def _prepare(engine: Engine, voices: VoiceStore, settings: ApiSettings,
             body: SpeechRequest) -> tuple[StoredVoice, GenerationConfig, int]:
    """Check a speech request (a bad one is refused before it takes a slot or a queue place):
    its voice, its settings (the request's over the voice's over the server's), its word count."""
    if body.model not in _model_ids(settings):
        raise ApiError(404, _unknown_model(body.model, settings), param="model", code="model_not_found")
    if len(body.input) > settings.max_input_chars:
        raise ApiError(400, f"input is {len(body.input)} characters, over this server's limit of "
                       f"{settings.max_input_chars}: send it in several requests", param="input",
                       code="string_above_max_length")
    try:
        stored = voices.get(body.voice_name)
    except VoiceNotFound as exc:
        raise ApiError(400, str(exc), param="voice", code="voice_not_found") from None
    config = body.overrides.over(stored.defaults.over(settings.generation))
    words = sum(1 for e in engine.tts.parse(body.input) if e.tokens)
    return stored, config, words
