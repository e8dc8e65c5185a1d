"""The one place where failures become OpenAI-shaped JSON error responses."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from server.errors import InvalidRequest, Overloaded, RefineryError, error_type_for_status

if TYPE_CHECKING:
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse

__all__ = ["error_json", "from_vllm_error", "install_error_handlers", "invalid_from_validation"]

logger = logging.getLogger(__name__)


def error_json(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | int | None = None,
    error_type: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {
        "error": {
            "message": message,
            "type": error_type or error_type_for_status(status),
            "param": param,
            "code": code,
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


def from_vllm_error(error: ErrorResponse) -> JSONResponse:
    """Re-render an `ErrorResponse` produced by vLLM's serving layer in OpenAI's vocabulary.

    vLLM puts the HTTP status in `code` and an exception-like name in `type`; OpenAI clients
    expect e.g. `invalid_request_error`. Message and param are kept as vLLM wrote them.
    """
    status = error.error.code
    code = "model_not_found" if status == HTTPStatus.NOT_FOUND else None
    return error_json(status, error.error.message, param=error.error.param, code=code)


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
        f"{clean_loc_for_param(tuple(e.get('loc', ()))) or 'body'}: {e.get('msg')}"
        for e in errors[:5]
    )
    return InvalidRequest(f"invalid request: {details}", param=param, code="invalid_value")


async def _refinery_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RefineryError)
    headers = None
    if isinstance(exc, Overloaded):
        headers = {"Retry-After": str(exc.retry_after_s)}
    return error_json(exc.status, exc.message, param=exc.param, code=exc.code, headers=headers)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return error_json(exc.status_code, str(exc.detail), headers=exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors: list[Any] = list(exc.errors())
    loc = errors[0].get("loc", ()) if errors and isinstance(errors[0], dict) else ()
    param = ".".join(str(p) for p in loc if p != "body") or None
    return error_json(400, f"invalid request: {errors[:5]}", param=param, code="invalid_value")


async def _vllm_raised(_: Request, exc: Exception) -> JSONResponse:
    """Exceptions raised (not returned) by vLLM's serving code: classify them as vLLM does."""
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

    error = create_error_response(exc)
    if error.error.code >= 500:
        logger.exception("engine error", exc_info=exc)
    return from_vllm_error(error)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error", exc_info=exc)
    return error_json(500, "internal server error", code="internal_error")


def install_error_handlers(app: FastAPI) -> None:
    from vllm.exceptions import VLLMError

    app.add_exception_handler(RefineryError, _refinery_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(VLLMError, _vllm_raised)
    # vLLM's serving code still raises these builtins for bad input (its own server maps them
    # to 400 the same way); a genuine bug among them is logged by `_vllm_raised` when >= 500.
    for builtin in (ValueError, TypeError, OverflowError, NotImplementedError):
        app.add_exception_handler(builtin, _vllm_raised)
    app.add_exception_handler(Exception, _unexpected)
