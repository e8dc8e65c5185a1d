"""Plain requests in gateway mode (and strategy requests, when the backend is a Refinery
server: `backend_kind`): forwarded to the backend byte for byte.

The request body goes to the backend exactly as the client sent it (Refinery has already
validated it with vLLM's request models, so a bad request is refused here as `vllm serve`
would refuse it); the backend's answer comes back unchanged: its status, its body, and for a
stream every SSE event as it arrives. Only transport failures are Refinery's to answer
(`backend_errors`): before the answer started as an error status, after a stream started as an
OpenAI-shaped SSE error event and `[DONE]`. Closing the stream (the client left, the deadline
passed) closes the backend connection, which makes vLLM abort the request.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response

from server.backend.backend_client import BackendClient, cancel_and_wait, transport_errors
from server.exceptions import RefineryError

__all__ = ["PlainProxy"]

# The end of one server-sent event.
_EVENT_END = re.compile(r"\r?\n\r?\n")
# Backend response headers a client of the gateway still needs.
_KEPT_HEADERS = ("retry-after",)


def _error_event(error: RefineryError) -> str:
    """A failure after the stream's 200, as the OpenAI-shaped event Refinery streams."""
    body = {"error": {"message": error.message, "type": error.type, "param": error.param,
                      "code": error.code}}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


class PlainProxy:
    """The serving calls of the plain routes (`create_chat_completion`, `create_completion`,
    as vLLM's serving objects name them), answered by the backend."""

    def __init__(self, client: BackendClient) -> None:
        self._client = client

    async def create_chat_completion(self, request: Any, raw_request: Request
                                     ) -> Response | AsyncGenerator[str, None]:
        return await self.forward("chat/completions", request, raw_request)

    async def create_completion(self, request: Any, raw_request: Request
                                ) -> Response | AsyncGenerator[str, None]:
        return await self.forward("completions", request, raw_request)

    async def forward(self, path: str, request: Any, raw_request: Request,
                      extra_headers: Mapping[str, str] | None = None
                      ) -> Response | AsyncGenerator[str, None]:
        """The backend's answer: a finished response, or (a stream the backend accepted) its
        events as they come. The exchange runs in a task that only this call cancels (once:
        `cancel_and_wait`), so that a client who leaves always closes the backend request.
        `extra_headers` go to the backend too (a forwarded strategy's session header)."""
        content = await raw_request.body()  # the bytes the client sent (read once, cached)
        request_id = getattr(raw_request.state, "request_id", None)
        headers = {"X-Request-Id": request_id} if request_id else {}
        headers.update(extra_headers or {})
        exchange = asyncio.create_task(
            self._exchange(path, content, headers, bool(getattr(request, "stream", False))))
        try:
            return await asyncio.shield(exchange)
        except asyncio.CancelledError:
            await cancel_and_wait(exchange)
            raise

    async def _exchange(self, path: str, content: bytes, headers: dict[str, str],
                        stream: bool) -> Response | AsyncGenerator[str, None]:
        response = await self._client.open(path, content=content, headers=headers)
        is_stream = (stream and response.status_code == 200
                     and response.headers.get("content-type", "").startswith("text/event-stream"))
        if is_stream:
            return self._events(response)
        try:
            with transport_errors(self._client.config.timeout_s):
                body = await response.aread()
        finally:
            await asyncio.shield(response.aclose())
        kept = {name: response.headers[name] for name in _KEPT_HEADERS if name in response.headers}
        return Response(body, status_code=response.status_code, headers=kept,
                        media_type=response.headers.get("content-type"))

    async def _events(self, response: httpx.Response) -> AsyncGenerator[str, None]:
        """The backend's SSE events, each exactly as sent, as soon as it is complete. A task of
        its own reads them, and only this generator cancels it (once: `cancel_and_wait`), so
        that closing the backend connection always completes when the client leaves."""
        queue: asyncio.Queue[str | RefineryError | None] = asyncio.Queue(maxsize=64)
        reader = asyncio.create_task(self._read(response, queue))
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, RefineryError):
                    yield _error_event(item)
                    yield "data: [DONE]\n\n"
                    return
                yield item
        finally:
            await cancel_and_wait(reader)

    async def _read(self, response: httpx.Response,
                    queue: asyncio.Queue[str | RefineryError | None]) -> None:
        pending = ""
        try:
            with transport_errors(self._client.config.timeout_s):
                async for text in response.aiter_text():
                    pending += text
                    while (end := _EVENT_END.search(pending)) is not None:
                        await queue.put(pending[:end.end()])
                        pending = pending[end.end():]
            if pending:
                await queue.put(pending)
            await queue.put(None)
        except RefineryError as exc:
            await queue.put(exc)
        finally:
            await response.aclose()
