"""The OpenAI-compatible speech API over the serving engine (FastAPI).

Routes (OpenAI's contract where it has one):
- `POST /v1/audio/speech`: `model`, `input` (`[S1]`/`[S2]` dialogue; plain text is speaker 1),
  `voice` (a name or `{"id": name}`), `response_format` (mp3 by default, opus, aac, flac, wav,
  pcm), `speed` (0.25-4, tempo without pitch change), `stream_format` (`audio`: the encoded
  file, streamed as it is generated; `sse`: `speech.audio.delta` events with base64 audio and
  the words they start, then `speech.audio.done` with usage), `instructions` (accepted and
  ignored: Dia2 takes no style prompt; a voice sets the style), and `seed` (an extension).
- `POST /v1/audio/speech/captioned`: the same request, answered with JSON: base64 audio and
  every word's start time.
- `GET /v1/models`, `GET /v1/audio/models`, `GET /v1/audio/voices`: open (Open WebUI fills its
  menus from them without a key).
- `GET|POST /v1/voices`, `DELETE /v1/voices/{name}`: stored voices (`dia2.serving.voices`);
  servers sharing a voices folder serve the same voices (docs/serving-replicas.md).
- `GET /health`, `GET /metrics` (Prometheus).

Every error has OpenAI's shape `{"error": {"message", "type", "param", "code"}}`, request
validation included. Generation runs in the engine's thread and audio is decoded and encoded in
worker threads, never in the event loop; a client that disconnects cancels its request.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from fastapi import Depends, FastAPI, File, Form, UploadFile
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from dia2.audio.encode import FORMATS, AudioEncoder
from dia2.errors import Dia2Error
from dia2.generation.loop import GenerationConfig
from dia2.generation.runtime import AudioChunk
from dia2.serving.engine import Engine
from dia2.serving.requests import EngineError, EngineFull, Handle, Request
from dia2.serving.voice_adapters import VoiceAdapters, load_stored_adapters  # noqa: F401 - api_server's and the studio's
from dia2.serving.voices import StoredVoice, UploadTooLarge, VoiceError, VoiceExists, VoiceStore
from dia2.text.script import ScriptError

logger = logging.getLogger(__name__)

SPEECH_MODELS = ("dia2", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")
"""Model ids a request may name: all are this server's one Dia2 (clients that only know
OpenAI's names work)."""


@dataclass(frozen=True)
class ApiSettings:
    """What the API needs besides the engine and the voices."""

    model_name: str = "dia2"
    """The loaded model, as /v1/models and /health report it."""
    api_key: str | None = None
    """Bearer key every route but the open ones requires (None: any key, or none, is accepted)."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """Generation defaults of every request (a request's seed, or its voice's, replaces the seed)."""
    max_input_chars: int = 20_000
    """Longest `input` accepted (longer scripts than the context are spoken in parts)."""
    retry_after_s: int = 2
    """Seconds a refused (429) client is told to wait."""


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class VoiceRef(BaseModel):
    id: str


class SpeechRequest(BaseModel):
    """OpenAI's speech request (unknown fields are ignored, as clients send extras)."""

    model_config = ConfigDict(extra="ignore")

    model: str
    input: str = Field(min_length=1)
    voice: str | VoiceRef
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"
    instructions: str | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)

    @property
    def voice_name(self) -> str:
        return self.voice if isinstance(self.voice, str) else self.voice.id


class _Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can live in a process)."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("dia2_requests", "Speech requests by outcome", ["outcome"], registry=self.registry)
        self.first_audio = Histogram(
            "dia2_first_audio_seconds", "Seconds from a request to its first audio bytes", registry=self.registry,
            buckets=(0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60),
        )
        self.frames = Counter("dia2_frames", "Audio frames generated (12.5 per second of audio)", registry=self.registry)
        Gauge("dia2_queue_depth", "Requests waiting for a slot", registry=self.registry).set_function(lambda: engine.queued)
        Gauge("dia2_busy_slots", "Slots generating", registry=self.registry).set_function(lambda: engine.busy_slots)


def create_app(engine: Engine, voices: VoiceStore, settings: ApiSettings | None = None,
               adapters: VoiceAdapters | None = None) -> FastAPI:
    """The API over a running (or runnable) engine and a voice store (`adapters`: the voices'
    adapters already loaded into the engine; none when not given)."""
    settings = settings or ApiSettings()
    adapters = adapters or VoiceAdapters(engine)
    voices.watch(adapters.changed)
    app = FastAPI(title="Dia2 speech server", version="1")
    app.state.engine, app.state.voices = engine, voices
    metrics = _Metrics(engine)
    _add_error_handlers(app, settings)

    async def authorized(request: HttpRequest) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        if header != f"Bearer {settings.api_key}":
            raise ApiError(401, "invalid or missing API key: send 'Authorization: Bearer <key>'", "authentication_error",
                           code="invalid_api_key")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": settings.model_name, "slots": engine.config.slots, "busy": engine.busy_slots,
                "queued": engine.queued, "max_queued": engine.config.max_queued}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "dia2"} for m in _model_ids(settings)]}

    @app.get("/v1/audio/models")
    async def audio_models() -> dict:
        return {"models": [{"id": m} for m in _model_ids(settings)]}

    # Reading the store first picks up other replicas' changes (a lock wait, voice loads,
    # adapter unloads): in a worker thread, so the event loop keeps every stream going.
    @app.get("/v1/audio/voices")
    async def audio_voices() -> dict:
        names = await run_in_threadpool(voices.names)
        return {"voices": [{"id": n, "name": n} for n in names]}

    @app.get("/v1/voices", dependencies=[Depends(authorized)])
    async def list_voices() -> dict:
        return {"voices": [_voice_record(v) for v in await run_in_threadpool(voices.list)]}

    @app.post("/v1/voices", dependencies=[Depends(authorized)], status_code=201)
    async def add_voice(
        name: str = Form(...), file: UploadFile | None = File(None), speaker_2: UploadFile | None = File(None),
        transcript: str | None = Form(None), adapter: str | None = Form(None), replace: bool = Form(False),
    ) -> dict:
        first, second = await _read_upload(file, voices), await _read_upload(speaker_2, voices)
        stored = await run_in_threadpool(_add_voice, engine, voices, adapters, name, first, second, transcript, adapter,
                                         replace)
        return _voice_record(stored)

    @app.delete("/v1/voices/{name}", dependencies=[Depends(authorized)])
    async def delete_voice(name: str) -> dict:
        await run_in_threadpool(voices.delete, name)  # its adapter is unloaded through `adapters.changed`
        return {"id": name, "deleted": True}

    @app.post("/v1/audio/speech", dependencies=[Depends(authorized)])
    async def speech(body: SpeechRequest) -> StreamingResponse:
        started = time.perf_counter()
        encoder = AudioEncoder(body.response_format, engine.tts.codec.sample_rate, body.speed)  # before a slot is taken
        handle, chunks, tokens = await run_in_threadpool(_start, engine, voices, adapters, settings, body, metrics)
        if body.stream_format == "sse":
            parts = _sse(chunks, encoder, body.speed, tokens, metrics, started)
            return StreamingResponse(_cancelling(parts, handle), media_type="text/event-stream")
        parts = _audio(chunks, encoder, metrics, started)
        return StreamingResponse(_cancelling(parts, handle), media_type=encoder.content_type)

    @app.post("/v1/audio/speech/captioned", dependencies=[Depends(authorized)])
    async def captioned(body: SpeechRequest) -> dict:
        handle, chunks, _ = await run_in_threadpool(_start, engine, voices, adapters, settings, body, metrics)
        try:
            return await run_in_threadpool(_captioned, chunks, body, engine.tts.codec.sample_rate, metrics)
        finally:
            handle.cancel()

    return app


def _model_ids(settings: ApiSettings) -> list[str]:
    return list(dict.fromkeys([settings.model_name, *SPEECH_MODELS]))


async def _read_upload(upload: UploadFile | None, voices: VoiceStore) -> bytes | None:
    """An uploaded file's bytes; one past the size limit is refused without reading it whole."""
    if upload is None:
        return None
    data = await upload.read(voices.max_upload_bytes + 1)
    if len(data) > voices.max_upload_bytes:
        raise UploadTooLarge(f"{upload.filename or 'the upload'} is over the {voices.max_upload_bytes / 2**20:g} MiB limit: "
                             "send a shorter clip or a compressed format")
    return data


def _voice_record(v: StoredVoice) -> dict:
    return {"id": v.name, "name": v.name, "speakers": v.speakers, "transcript": v.transcript,
            "adapter": v.adapter is not None, "prefix": v.voice is not None, "builtin": v.builtin}


def _add_voice(engine: Engine, voices: VoiceStore, adapters: VoiceAdapters, name: str, first: bytes | None,
               second: bytes | None, transcript: str | None, adapter: str | None, replace: bool) -> StoredVoice:
    if first is None and adapter is None:
        raise ApiError(400, "a voice needs a recording ('file') or an adapter ('adapter'), or both", param="file")
    if adapter is not None and not _HUB_ID.fullmatch(adapter):
        # A client must not make the server read its disk: local adapters are the operator's (--adapter).
        raise ApiError(400, f"adapter '{adapter}': give a Hub repo id like 'user/my-voice-lora' (local adapter "
                       "folders are served with the server's --adapter NAME=PATH flag)", param="adapter")
    if not replace and name in voices.names():
        raise VoiceExists(f"a voice named {name!r} exists: pass replace=true to overwrite it")
    key = adapters.load(adapter) if adapter is not None else None  # refused before anything is stored
    try:
        if first is None:
            stored = voices.add_adapter(name, adapter, replace=replace, local_adapter=False)
        else:
            stored = voices.add(name, first, second, transcript=transcript, adapter=adapter, replace=replace,
                                local_adapter=False)
    except BaseException:
        if key is not None:
            adapters.retire(key)
        raise
    adapters.bind(name, key, stored.revision)
    return stored


_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def _start(engine: Engine, voices: VoiceStore, adapters: VoiceAdapters, settings: ApiSettings, body: SpeechRequest,
           metrics: _Metrics) -> tuple[Handle, Iterator[AudioChunk], int]:
    """Check the request, submit it and wait for its first chunk, so a request that fails from
    the start is answered with its error, not an empty stream. Returns the handle, its chunks
    (the first one included) and the script's word count."""
    if body.model not in _model_ids(settings):
        raise ApiError(404, f"model '{body.model}' does not exist here: use one of {', '.join(_model_ids(settings))}",
                       param="model", code="model_not_found")
    if len(body.input) > settings.max_input_chars:
        raise ApiError(413, f"input is {len(body.input)} characters, over this server's limit of "
                       f"{settings.max_input_chars}: send it in several requests", param="input")
    stored = voices.get(body.voice_name)
    seed = next((s for s in (body.seed, stored.seed, settings.generation.seed) if s is not None), None)
    config = replace(settings.generation, seed=seed)
    words = sum(1 for e in engine.tts.parse(body.input) if e.tokens)  # refused before it takes a slot
    handle = engine.submit(Request(body.input, config, stored.voice, adapters.key(stored)))
    chunks = iter(handle)
    try:
        first = next(chunks)
    except BaseException:
        handle.cancel()
        raise
    metrics.requests.labels("started").inc()
    return handle, itertools.chain([first], chunks), words


def _audio(chunks: Iterator[AudioChunk], encoder: AudioEncoder, metrics: _Metrics, started: float) -> Iterator[bytes]:
    """The encoded audio, piece by piece, as the engine makes it."""
    first = True
    for chunk in chunks:
        metrics.frames.inc(chunk.codes.shape[-1])
        data = encoder.push(chunk.waveform)
        if data:
            if first:
                metrics.first_audio.observe(time.perf_counter() - started)
                first = False
            yield data
    yield encoder.finish()
    metrics.requests.labels("completed").inc()


def _sse(chunks: Iterator[AudioChunk], encoder: AudioEncoder, speed: float, tokens: int, metrics: _Metrics,
         started: float) -> Iterator[str]:
    """OpenAI's speech SSE: a `speech.audio.delta` per piece (base64 audio, and the words it
    starts), then `speech.audio.done` with usage (input tokens: the script's words; output: frames)."""
    frames, observed = 0, False
    try:
        for chunk in chunks:
            frames += chunk.codes.shape[-1]
            metrics.frames.inc(chunk.codes.shape[-1])
            data = encoder.push(chunk.waveform)
            if chunk.done:
                data += encoder.finish()
            if data and not observed:
                metrics.first_audio.observe(time.perf_counter() - started)
                observed = True
            if data or chunk.words:
                words = [{"word": w, "start": round(t / speed, 3)} for w, t in chunk.words]
                yield _event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode(), "words": words})
    except Exception as exc:  # the headers are sent: the error can only travel as an event
        yield _event({"type": "error", "error": {"message": str(exc), "type": "server_error", "param": None, "code": None}})
        return
    metrics.requests.labels("completed").inc()
    yield _event({"type": "speech.audio.done", "usage": {"input_tokens": tokens, "output_tokens": frames,
                                                          "total_tokens": tokens + frames}})


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _captioned(chunks: Iterator[AudioChunk], body: SpeechRequest, sample_rate: int, metrics: _Metrics) -> dict:
    encoder = AudioEncoder(body.response_format, sample_rate, body.speed, streaming=False)
    audio, words = bytearray(), []
    for chunk in chunks:
        metrics.frames.inc(chunk.codes.shape[-1])
        audio += encoder.push(chunk.waveform)
        words += [{"word": w, "start": round(t / body.speed, 3)} for w, t in chunk.words]
    audio += encoder.finish()
    metrics.requests.labels("completed").inc()
    return {"audio": base64.b64encode(bytes(audio)).decode(), "format": body.response_format,
            "content_type": FORMATS[body.response_format], "words": words}


async def _cancelling(parts: Iterator[Any], handle: Handle) -> AsyncIterator[Any]:
    """Stream `parts` from a worker thread; however the response ends (done, error, or the client
    gone: Starlette cancels this generator), the request is cancelled and its slot freed."""
    try:
        async for part in iterate_in_threadpool(parts):
            yield part
    finally:
        handle.cancel()


def _add_error_handlers(app: FastAPI, settings: ApiSettings) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: HttpRequest, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: HttpRequest, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "form")]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg', 'invalid request')}" if param else str(first.get("msg", "invalid request"))
        return ApiError(400, message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: HttpRequest, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return ApiError(exc.status_code, str(exc.detail), kind).response()

    @app.exception_handler(VoiceError)
    async def voice_error(request: HttpRequest, exc: VoiceError) -> JSONResponse:
        kind = "server_error" if exc.status >= 500 else "invalid_request_error"
        return ApiError(exc.status, str(exc), kind, param="voice" if exc.status in (404, 503) else "name").response()

    @app.exception_handler(EngineFull)
    async def full(request: HttpRequest, exc: EngineFull) -> JSONResponse:
        return ApiError(429, str(exc), "rate_limit_error", code="engine_full", headers={"Retry-After": str(settings.retry_after_s)}).response()

    @app.exception_handler(ScriptError)
    async def script_error(request: HttpRequest, exc: ScriptError) -> JSONResponse:
        return ApiError(422, f"input cannot be spoken: {exc}", param="input").response()

    @app.exception_handler(EngineError)
    async def conflict(request: HttpRequest, exc: EngineError) -> JSONResponse:
        return ApiError(409, str(exc), code="conflict").response()

    @app.exception_handler(Dia2Error)
    async def dia2_error(request: HttpRequest, exc: Dia2Error) -> JSONResponse:
        return ApiError(400, str(exc)).response()

    @app.exception_handler(Exception)
    async def crash(request: HttpRequest, exc: Exception) -> JSONResponse:
        logger.exception("request failed")
        return ApiError(500, f"the server failed: {type(exc).__name__}: {exc}", "server_error").response()
