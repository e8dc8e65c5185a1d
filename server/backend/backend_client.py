"""One pooled httpx client per gateway, talking to the backend's OpenAI API.

Every request to the backend goes through `BackendClient.open`: it retries what never reached
the backend (connect errors and connect timeouts, `connect_retries` times with a short backoff)
and nothing else, so a request is never sent twice and a 4xx is never retried. Transport
failures become Refinery's errors (`backend_errors`): unreachable → 503 with Retry-After,
silent past the read timeout → 504, broken mid-answer → 502. Closing a response early closes
its connection, which is how a vLLM backend learns that the request is abandoned (vLLM aborts
a request whose client disconnects).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from server.backend.backend_errors import BackendFailed, BackendTimeout, BackendUnavailable

__all__ = [
    "CONNECT_TIMEOUT_S",
    "BackendClient",
    "BackendConfig",
    "cancel_and_wait",
    "transport_errors",
]

# How long a TCP connect to the backend may take before it counts as unreachable.
CONNECT_TIMEOUT_S = 5.0
# The first retry waits this long, each later one twice as long.
_RETRY_BACKOFF_S = 0.1


@dataclass(frozen=True)
class BackendConfig:
    """Where the backend is and how to talk to it (REFINERY_BACKEND*)."""

    base_url: str  # the backend's OpenAI base URL, e.g. http://vllm:8000/v1
    api_key: str | None = None
    timeout_s: float = 600.0  # longest silence from the backend while a response is awaited
    connect_retries: int = 2
    session_header: str = "x-session-id"
    send_priority: bool = True
    # What the backend is (`backend_kind`): "auto" asks it; "refinery" or "openai" is taken as
    # said.
    kind: str = "auto"
    # Connections open at once: a strategy request may run 64 sub-requests side by side.
    max_connections: int = 1024


@contextlib.contextmanager
def transport_errors(timeout_s: float) -> Iterator[None]:
    """httpx's transport errors inside the block, as Refinery's backend errors."""
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise BackendUnavailable(type(exc).__name__) from exc
    except httpx.TimeoutException as exc:  # read, write, or waiting for a pooled connection
        raise BackendTimeout(timeout_s) from exc
    except httpx.TransportError as exc:
        raise BackendFailed(f"{type(exc).__name__}: connection lost") from exc


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel `task` once and wait until it has finished, whatever further cancellations the
    caller receives meanwhile (re-raised afterwards).

    Why once: a task reading a backend stream closes the connection when it is cancelled, and a
    second cancellation arriving during that close (asyncio.gather propagates cancellations,
    Starlette's cancel scopes deliver them at every await) cuts it short: httpcore has then
    marked the stream closed without closing the socket, and the backend runs on. So the
    reading task is never cancelled by anyone but its owner, here, exactly once.
    """
    task.cancel()
    interrupted = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            interrupted = interrupted or not task.done()
    if interrupted:
        raise asyncio.CancelledError


class BackendClient:
    """Pooled connections to one backend; `open` sends, `events` reads a stream."""

    def __init__(self, config: BackendConfig,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        """`transport` replaces the network (tests pass an `httpx.MockTransport`)."""
        self.config = config
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._http = httpx.AsyncClient(
            base_url=config.base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(config.timeout_s, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(max_connections=config.max_connections,
                                max_keepalive_connections=min(128, config.max_connections)),
            transport=transport,
        )

    async def open(self, path: str, *, content: bytes | None = None,
                   json_body: Mapping[str, Any] | None = None,
                   headers: Mapping[str, str] | None = None,
                   method: str = "POST") -> httpx.Response:
        """Send a request and return its response with the body not yet read (the caller
        closes it). Retries only failures to connect: nothing was sent then."""
        if json_body is not None:
            content = json.dumps(json_body).encode()
        request_headers = {"Content-Type": "application/json"} if content is not None else {}
        request_headers.update(headers or {})
        request = self._http.build_request(method, path.lstrip("/"), content=content,
                                           headers=request_headers)
        attempt = 0
        while True:
            try:
                with transport_errors(self.config.timeout_s):
                    return await self._http.send(request, stream=True)
            except BackendUnavailable:
                if attempt >= self.config.connect_retries:
                    raise
                await asyncio.sleep(_RETRY_BACKOFF_S * 2**attempt)
                attempt += 1

    async def get_json(self, path: str) -> Any:
        """GET a JSON document (the backend's model list); errors as `open` raises them, and
        a non-2xx status as `httpx.HTTPStatusError`."""
        response = await self.open(path, method="GET")
        try:
            with transport_errors(self.config.timeout_s):
                await response.aread()
            response.raise_for_status()
            return response.json()
        finally:
            await asyncio.shield(response.aclose())

    async def events(self, response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
        """The JSON payloads of a backend's SSE stream (`data: {...}` lines) until `[DONE]`."""
        with transport_errors(self.config.timeout_s):
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators and comments
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                yield json.loads(data)

    async def aclose(self) -> None:
        await self._http.aclose()
