"""The one error path: any exception → an OpenAI-shaped error, the same streamed or not.

`classify` is the only place that decides status, type, param, code and message: for
Refinery's own errors (`server.exceptions`), for FastAPI's, for vLLM's (raised or returned as an
`ErrorResponse`, classified by vLLM's own `create_error_response`, as `vllm serve` does), and
for the unexpected (500). The JSON handlers, the request-context middleware's last-resort
answer, and the SSE error event of a streamed strategy all use it. A 500 is logged once, with
its traceback and request id.

No error reflects a client's input at length: messages that quote a value use
`server.exceptions.excerpt` (≤ 100 characters, escaped), validation details never carry the
input, and every message is cut at `MAX_MESSAGE_CHARS` whoever wrote it (vLLM's messages quote
values too, e.g. an unknown model name).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from server.exceptions import (
    InvalidRequest,
    RefineryError,
    ServingRefused,
    error_type_for_status,
)

if TYPE_CHECKING:
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse

__all__ = [
    "MAX_MESSAGE_CHARS",
    "ClassifiedError",
    "classify",
    "from_vllm_error",
    "install_error_handlers",
    "invalid_from_validation",
    "log_if_server_error",
]

logger = logging.getLogger(__name__)

# The longest error message a client is sent; longer ones are cut, marked with `…`.
MAX_MESSAGE_CHARS = 1000
# The longest piece one validation error contributes to a message.
_DETAIL_CHARS = 200


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class ClassifiedError:
    """What a client is told about a failure."""

    status: int
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=dict(self.headers))

    def sse_event(self) -> str:
        """The error as a server-sent event, for a stream whose 200 is already sent."""
        return f"data: {json.dumps(self.body(), ensure_ascii=False)}\n\n"


def _error(status: int, message: str, *, param: str | None = None,
           code: str | int | None = None, headers: Mapping[str, str] | None = None
           ) -> ClassifiedError:
    return ClassifiedError(status, _cut(message, MAX_MESSAGE_CHARS), error_type_for_status(status),
                           None if param is None else _cut(param, _DETAIL_CHARS), code,
                           dict(headers or {}))


def from_vllm_error(error: ErrorResponse) -> ClassifiedError:
    """An `ErrorResponse` of vLLM's serving layer, in OpenAI's vocabulary.

    vLLM puts the HTTP status in `code` and an exception-like name in `type`; OpenAI clients
    expect e.g. `invalid_request_error`. Message and param are kept as vLLM wrote them.
    """
    return classify(ServingRefused.from_response(error))


def invalid_from_validation(
    exc: ValidationError, *, prefix: tuple[str | int, ...] = ()
) -> InvalidRequest:
    """Turn a pydantic ValidationError into an InvalidRequest naming the first bad field."""
    from vllm.entrypoints.serve.exception_handling.handlers.validation import clean_loc_for_param

    errors = exc.errors(include_url=False)
    if not errors:
        return InvalidRequest(str(exc))
    first = errors[0]
    param = clean_loc_for_param(prefix + tuple(first.get("loc", ()))) or None
    details = "; ".join(
        _cut(f"{clean_loc_for_param(tuple(e.get('loc', ()))) or 'body'}: {e.get('msg')}",
             _DETAIL_CHARS)
        for e in errors[:5]
    )
    return InvalidRequest(f"invalid request: {details}", param=param, code="invalid_value")


_ENGINE_DEAD_MESSAGE = "the engine has stopped; the server is restarting, retry shortly"


def _engine_died(exc: BaseException) -> bool:
    from vllm.v1.engine.exceptions import EngineDeadError

    return isinstance(exc, EngineDeadError)


def classify(exc: BaseException) -> ClassifiedError:
    """Status, type, param, code and message for any exception."""
    if isinstance(exc, RefineryError):
        return _error(exc.status, exc.message, param=exc.param, code=exc.code,
                      headers=exc.headers)
    if isinstance(exc, HTTPException):
        return _error(exc.status_code, str(exc.detail), headers=exc.headers)
    if isinstance(exc, RequestValidationError):
        errors: list[Any] = [e for e in exc.errors() if isinstance(e, dict)]
        loc = errors[0].get("loc", ()) if errors else ()
        param = ".".join(str(p) for p in loc if p != "body") or None
        # The location and the reason of each error, never the input it quotes.
        details = "; ".join(
            _cut(f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('msg')}",
                 _DETAIL_CHARS)
            for e in errors[:5]
        )
        return _error(400, f"invalid request: {details}", param=param, code="invalid_value")
    if _engine_died(exc):
        # The engine core process is gone: not a bug of this request, and the process is about
        # to exit so that it is restarted (server.app._watch_engine). Retry elsewhere.
        return _error(503, _ENGINE_DEAD_MESSAGE, code="engine_dead")
    if isinstance(exc, Exception):
        # vLLM's own classification: its VLLMError tree, and the builtins its serving code
        # still raises for bad input (ValueError → 400 …); anything else is a 500.
        from vllm.entrypoints.serve.exception_handling.error_response import (
            create_error_response,
        )

        classified = from_vllm_error(create_error_response(exc))
        if classified.status == HTTPStatus.INTERNAL_SERVER_ERROR:
            # A bug or an engine failure: no internals leak to the client (they are logged).
            return _error(500, "internal server error", code="internal_error")
        return classified
    return _error(500, "internal server error", code="internal_error")


def log_if_server_error(error: ClassifiedError, exc: BaseException, request_id: str) -> None:
    """Log a 500 once, with its traceback and the request id the client got. Other statuses
    are answers, not failures (503 while loading or draining, 501 for what vLLM does not
    support): the access log line records them."""
    if error.status == HTTPStatus.INTERNAL_SERVER_ERROR:
        logger.error("request %s failed with %d", request_id, error.status, exc_info=exc)


async def _answer(request: Request, exc: Exception) -> JSONResponse:
    error = classify(exc)
    log_if_server_error(error, exc, getattr(request.state, "request_id", "-"))
    return error.response()


def install_error_handlers(app: FastAPI) -> None:
    """Answer, inside the request context (so with `X-Request-Id`), every exception class that
    Starlette's ExceptionMiddleware can catch. A bare `Exception` handler would run in
    Starlette's outermost ServerErrorMiddleware, outside that context, so the remaining
    unexpected exceptions are answered by `RequestContextMiddleware` with `classify` too."""
    from vllm.exceptions import VLLMError

    for exc_class in (RefineryError, HTTPException, RequestValidationError, VLLMError,
                      ValueError, TypeError, OverflowError, NotImplementedError):
        app.add_exception_handler(exc_class, _answer)
