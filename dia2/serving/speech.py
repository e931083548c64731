"""A speech request on the serving engine, read from the event loop (the speech routes of
`dia2.serving.api`).

Waiting costs no thread: a request's updates are awaited on its handle (`Handle.batches`, woken by
the engine thread), and only the work on a batch of them (the Mimi decode and the audio encoder)
runs in a worker thread, from threads kept for the streams (`threads`: a limiter the API sizes to
its slots, apart from the pool that uploads and voice listings share). So however many clients
wait for a slot or send requests at once, the active streams keep going.

A client that goes away cancels its request: while it waits or is generated for a JSON answer
(`cancel_when_gone` watches the connection), or while it is streamed (Starlette stops the stream,
and its end cancels the request).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar

from anyio import CapacityLimiter, to_thread
from fastapi import Request as HttpRequest
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.types import Receive, Scope, Send

from dia2.audio.encode import FORMATS, AudioEncoder
from dia2.generation.tts import AudioChunk, UpdateDecoder
from dia2.generation.voice import MAX_SEED, VoiceDefaults
from dia2.serving.operations import Metrics
from dia2.serving.requests import Handle

T = TypeVar("T")


class VoiceRef(BaseModel):
    id: str


class SpeechRequest(BaseModel):
    """OpenAI's speech request (unknown fields are ignored, as clients send extras), with four
    extensions that override the voice's and the server's settings: seed, cfg, temperature, top_k."""

    model_config = ConfigDict(extra="ignore")

    model: str
    input: str = Field(min_length=1)
    voice: str | VoiceRef
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"
    instructions: str | None = None
    seed: int | None = Field(None, ge=0, lt=MAX_SEED)
    cfg: float | None = Field(None, gt=0)
    temperature: float | None = Field(None, ge=0)
    top_k: int | None = Field(None, ge=0)

    @field_validator("voice", mode="before")
    @classmethod
    def _one_voice_error(cls, value: Any) -> Any:
        """One clear error for a voice of the wrong type (not one per member of the union)."""
        if isinstance(value, str) or (isinstance(value, dict) and isinstance(value.get("id"), str)):
            return value
        raise ValueError("give a voice name such as 'alloy', or an object {\"id\": name}")

    @property
    def voice_name(self) -> str:
        return self.voice if isinstance(self.voice, str) else self.voice.id

    @property
    def overrides(self) -> VoiceDefaults:
        """The settings this request sets itself (they win over its voice's)."""
        return VoiceDefaults(seed=self.seed, cfg=self.cfg, temperature=self.temperature, top_k=self.top_k)


@asynccontextmanager
async def cancel_when_gone(http: HttpRequest, handle: Handle) -> AsyncIterator[None]:
    """Cancel `handle` if the client disconnects while the block runs. The request body is read
    already, so the next message the server has for this request is the disconnect."""

    async def watch() -> None:
        while (await http.receive())["type"] != "http.disconnect":
            pass
        handle.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        yield
    finally:
        watcher.cancel()


class Speech:
    """One submitted request's audio, awaited batch by batch; each batch is decoded (and made into
    what the route sends) in a worker thread. `done`: the request ended complete, not cancelled."""

    def __init__(self, handle: Handle, codec, words: int, metrics: Metrics, threads: CapacityLimiter) -> None:
        self.handle, self.words, self.metrics, self.threads = handle, words, metrics, threads
        self.started = time.perf_counter()
        self.frames, self.done, self.failed, self._ended = 0, False, False, False
        self._batches = handle.batches()
        self._decoder = UpdateDecoder(codec)
        self._first: list | None = None
        self._audio_out = False

    async def begin(self) -> bool:
        """Wait for the first updates (through the queue and the prefill): False if the request was
        cancelled first; raises its error if it failed from the start, so the client gets an error
        answer, not an empty stream."""
        try:
            self._first = await self._next()
        finally:
            if self.handle.admitted is not None:
                self.metrics.queue_wait.observe(self.handle.admitted - self.handle.submitted)
        if self._first is None:
            return False
        self.metrics.outcome("started")
        return True

    async def pieces(self, make: Callable[[list[AudioChunk]], T]) -> AsyncIterator[T]:
        """`make(chunks)` of each batch, from the first one on (after `begin`)."""
        batch, self._first = self._first, None
        while batch is not None:
            yield await to_thread.run_sync(self._decoded, batch, make, limiter=self.threads)
            batch = await self._next()

    def audio_out(self) -> None:
        """Note that audio bytes went out (the first time: the time to first audio)."""
        if not self._audio_out:
            self._audio_out = True
            self.metrics.first_audio.observe(time.perf_counter() - self.started)

    def end(self) -> None:
        """However the answer ended: cancel the request (a no-op once it is done), count its
        outcome. Only the first call counts."""
        if self._ended:
            return
        self._ended = True
        self.handle.cancel()
        self.metrics.outcome("completed" if self.done else "failed" if self.failed else "cancelled")

    async def _next(self) -> list | None:
        try:
            return await anext(self._batches, None)
        except Exception:
            self.failed = True
            raise

    def _decoded(self, batch: list, make: Callable[[list[AudioChunk]], T]) -> T:
        chunks = [c for c in map(self._decoder.push, batch) if c is not None]
        frames = sum(c.codes.shape[-1] for c in chunks)
        self.frames += frames
        self.metrics.frames.inc(frames)
        self.done = self.done or any(u.done for u in batch)
        return make(chunks)


class SpeechResponse(StreamingResponse):
    """A streamed speech answer that ends its request however the response ends: done, failed,
    or stopped by Starlette when the client goes away (even before the body's first piece)."""

    def __init__(self, content: AsyncIterator[Any], speech: Speech, media_type: str) -> None:
        super().__init__(content, media_type=media_type)
        self.speech = speech

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.speech.end()


def encoded(encoder: AudioEncoder) -> Callable[[list[AudioChunk]], bytes]:
    """make(chunks) -> the encoded bytes ready (the encoder's tail after the last chunk)."""

    def make(chunks: list[AudioChunk]) -> bytes:
        data = b"".join(encoder.push(c.waveform) for c in chunks)
        return data + encoder.finish() if chunks and chunks[-1].done else data

    return make


async def stream_audio(speech: Speech, encoder: AudioEncoder) -> AsyncIterator[bytes]:
    """The encoded audio, piece by piece, as the engine makes it."""
    async for data in speech.pieces(encoded(encoder)):
        if data:
            speech.audio_out()
            yield data


async def stream_sse(speech: Speech, encoder: AudioEncoder, speed: float) -> AsyncIterator[str]:
    """OpenAI's speech SSE: a `speech.audio.delta` per chunk with audio or words (base64 audio and
    the words it starts), then `speech.audio.done` with usage (input tokens: the script's words;
    output: frames)."""
    encode = encoded(encoder)

    def events(chunks: list[AudioChunk]) -> list[str]:
        out = []
        for chunk in chunks:
            data = encode([chunk])
            if data or chunk.words:
                words = [{"word": w, "start": round(t / speed, 3)} for w, t in chunk.words]
                out.append(_event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode(), "words": words}))
        return out

    try:
        async for batch in speech.pieces(events):
            if batch:
                speech.audio_out()
            for event in batch:
                yield event
        if speech.done:
            tokens = {"input_tokens": speech.words, "output_tokens": speech.frames}
            yield _event({"type": "speech.audio.done", "usage": {**tokens, "total_tokens": speech.words + speech.frames}})
    except Exception as exc:  # the headers are sent: the error can only travel as an event
        yield _event({"type": "error", "error": {"message": str(exc), "type": "server_error", "param": None, "code": None}})


async def captioned(speech: Speech, response_format: str, sample_rate: int, speed: float) -> dict | None:
    """The whole audio as base64 and every word's start; None if the request was cancelled."""
    encoder = AudioEncoder(response_format, sample_rate, speed, streaming=False)
    audio, words = bytearray(), []

    def collect(chunks: list[AudioChunk]) -> bytes:
        words.extend({"word": w, "start": round(t / speed, 3)} for c in chunks for w, t in c.words)
        return b"".join(encoder.push(c.waveform) for c in chunks)

    async for data in speech.pieces(collect):
        audio += data
    if not speech.done:
        return None
    audio += await to_thread.run_sync(encoder.finish, limiter=speech.threads)
    return {"audio": base64.b64encode(bytes(audio)).decode(), "format": response_format,
            "content_type": FORMATS[response_format], "words": words}


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"
