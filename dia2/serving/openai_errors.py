"""The speech server's errors in OpenAI's shape and with OpenAI's status codes.

Every error answer is `{"error": {"message", "type", "param", "code"}}`. As OpenAI's API does: a
request that is invalid, names an unknown voice or holds text that cannot be spoken gets 400
(`invalid_request_error`, `param` naming the field); a bad key 401; an unknown model 404
(`model_not_found`); a full server 429 (`rate_limit_error`, with Retry-After); the server's own
failures 5xx (`server_error`: 500 unexpected, 502/504 the Hub, 503 a part of the server that is
unavailable). A method a route does not take gets 405 with `Allow`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from dia2.errors import Dia2Error
from dia2.serving.requests import EngineError, EngineFull
from dia2.serving.voices import VoiceError
from dia2.text.script import ScriptError

logger = logging.getLogger(__name__)

FORM_FIELDS = {"speaker_1": "file"}
"""Upload parts as the voice store labels them -> the form field a client sent them in."""


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


def add_error_handlers(app: FastAPI, retry_after_s: int, answered: Callable[[ApiError], None],
                       allowed: Callable[[HttpRequest], list[str]]) -> None:
    """Answer every error in OpenAI's shape; `answered(error)` sees each error answer (metrics),
    `allowed(request)` gives the methods of the request's path (405's Allow)."""

    def answer(error: ApiError) -> JSONResponse:
        answered(error)
        return error.response()

    @app.exception_handler(ApiError)
    async def api_error(request: HttpRequest, exc: ApiError) -> JSONResponse:
        return answer(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: HttpRequest, exc: RequestValidationError) -> JSONResponse:
        return answer(validation_error(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: HttpRequest, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 405:
            methods = allowed(request)
            message = f"{request.method} is not allowed on {request.url.path}: use {', '.join(methods)}"
            return answer(ApiError(405, message, headers={"Allow": ", ".join(methods)}))
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return answer(ApiError(exc.status_code, str(exc.detail), kind, headers=dict(exc.headers or {})))

    @app.exception_handler(VoiceError)
    async def voice_error(request: HttpRequest, exc: VoiceError) -> JSONResponse:
        kind = "server_error" if exc.status >= 500 else "not_found_error" if exc.status == 404 else "invalid_request_error"
        return answer(ApiError(exc.status, str(exc), kind, param=FORM_FIELDS.get(exc.param, exc.param)))

    @app.exception_handler(EngineFull)
    async def full(request: HttpRequest, exc: EngineFull) -> JSONResponse:
        return answer(ApiError(429, str(exc), "rate_limit_error", code="engine_full",
                               headers={"Retry-After": str(retry_after_s)}))

    @app.exception_handler(ScriptError)
    async def script_error(request: HttpRequest, exc: ScriptError) -> JSONResponse:
        return answer(ApiError(400, f"input cannot be spoken: {exc}", param="input"))

    @app.exception_handler(EngineError)
    async def conflict(request: HttpRequest, exc: EngineError) -> JSONResponse:
        return answer(ApiError(409, str(exc), code="conflict"))

    @app.exception_handler(Dia2Error)
    async def dia2_error(request: HttpRequest, exc: Dia2Error) -> JSONResponse:
        return answer(ApiError(400, str(exc)))

    @app.exception_handler(Exception)
    async def crash(request: HttpRequest, exc: Exception) -> JSONResponse:
        logger.exception("request failed")
        return answer(ApiError(500, f"the server failed: {type(exc).__name__}: {exc}", "server_error"))


def validation_error(errors: list[dict]) -> ApiError:
    """A 400 for a request FastAPI could not parse or validate, naming the top-level field at fault
    (OpenAI's `param`) and what is wrong with it."""
    first = errors[0] if errors else {}
    kind, message = first.get("type", ""), str(first.get("msg", "invalid request"))
    if kind == "json_invalid":
        where = first.get("loc", ())[-1] if first.get("loc") else None
        detail = first.get("ctx", {}).get("error", "JSON decode error")
        return ApiError(400, f"the request body is not valid JSON ({detail}, at character {where}): send a JSON "
                        "object such as {\"model\": \"tts-1\", \"voice\": \"alloy\", \"input\": \"Hello\"}")
    fields = [p for p in first.get("loc", ()) if p not in ("body", "query", "path", "form", "header")]
    param = str(fields[0]) if fields else None
    if param is None:
        return ApiError(400, f"the request body is missing or not a JSON object ({message}): send a JSON object")
    if kind == "missing":
        return ApiError(400, f"'{param}' is required", param=param)
    message = message.removeprefix("Value error, ")
    given = repr(first.get("input"))
    return ApiError(400, f"{param}: {message} (got {given[:80]})", param=param)
