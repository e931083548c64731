"""What an operator runs the speech server with besides the API: Prometheus metrics, CORS for
browser clients on other origins, and HTTP's method rules (HEAD on every GET route, OPTIONS
answered with the methods a path takes, 405 with `Allow` for the others).

Metrics (`GET /metrics`), one registry per app:
- `dia2_requests_total{outcome}`: speech requests by outcome: `started` (first audio out),
  `completed`, `cancelled` (the client went away, queued or streaming), `refused` (429: every
  slot busy and the queue full), `failed` (generation failed after the request was taken);
- `dia2_errors_total{status}`: error answers of every route by HTTP status;
- `dia2_queue_wait_seconds`: from a speech request's submission to its slot;
- `dia2_first_audio_seconds`, `dia2_frames_total`, `dia2_queue_depth`, `dia2_busy_slots`.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from dia2.serving.engine import Engine

OUTCOMES = ("started", "completed", "cancelled", "refused", "failed")
_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can live in a process)."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("dia2_requests", "Speech requests by outcome", ["outcome"], registry=self.registry)
        for outcome in OUTCOMES:
            self.requests.labels(outcome)  # every outcome listed from the start, at 0
        self.errors = Counter("dia2_errors", "Error answers by HTTP status", ["status"], registry=self.registry)
        self.queue_wait = Histogram("dia2_queue_wait_seconds", "Seconds a speech request waited for a slot",
                                    registry=self.registry, buckets=_WAIT_BUCKETS)
        self.first_audio = Histogram(
            "dia2_first_audio_seconds", "Seconds from a request to its first audio bytes", registry=self.registry,
            buckets=(0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60),
        )
        self.frames = Counter("dia2_frames", "Audio frames generated (12.5 per second of audio)", registry=self.registry)
        Gauge("dia2_queue_depth", "Requests waiting for a slot", registry=self.registry).set_function(lambda: engine.queued)
        Gauge("dia2_busy_slots", "Slots generating", registry=self.registry).set_function(lambda: engine.busy_slots)

    def outcome(self, outcome: str) -> None:
        self.requests.labels(outcome).inc()


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """The methods the routes at the request's path take (HEAD with GET, and OPTIONS); [] for none."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches({**scope, "method": "GET"})
        route_methods = getattr(route, "methods", None)
        if match != Match.NONE and route_methods:
            methods |= set(route_methods)
    if not methods:
        return []
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods | {"OPTIONS"})


class MethodRules:
    """ASGI middleware: OPTIONS on a path the app serves answers 204 with `Allow` (a CORS preflight
    never reaches here: the CORS middleware outside answers it)."""

    def __init__(self, app: ASGIApp, fastapi: FastAPI) -> None:
        self.app, self.fastapi = app, fastapi

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            methods = allowed_methods(self.fastapi, scope)
            if methods:
                await Response(status_code=204, headers={"Allow": ", ".join(methods)})(scope, receive, send)
                return
        await self.app(scope, receive, send)


def add_operations(app: FastAPI, cors_origins: Sequence[str]) -> None:
    """The method rules, and CORS for `cors_origins` (none: no CORS headers; "*": any origin)."""
    app.add_middleware(MethodRules, fastapi=app)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "HEAD", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type"], expose_headers=["Retry-After"], max_age=600,
        )
