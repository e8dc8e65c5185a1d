"""Rendering what vLLM's serving layer returns as HTTP responses (plain requests)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse
from vllm.entrypoints.serve.engine.protocol import ErrorResponse

from server.api.errors import from_vllm_error

__all__ = ["render_serving_result"]


def render_serving_result(result: ErrorResponse | AsyncGenerator[str, None] | Any) -> Response:
    """An ErrorResponse, a finished response model, or an SSE generator → the HTTP response.

    The JSON body is `model_dump()`, exactly as `vllm serve` renders it, so shapes match.
    """
    if isinstance(result, ErrorResponse):
        return from_vllm_error(result)
    if isinstance(result, AsyncGenerator):
        return StreamingResponse(result, media_type="text/event-stream")
    return JSONResponse(content=result.model_dump())
