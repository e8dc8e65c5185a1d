"""Per-request bookkeeping as a pure ASGI middleware: request id, access log, metrics, and the
in-flight count that the SIGTERM drain waits on.

Pure ASGI (not BaseHTTPMiddleware) so that streaming responses and disconnect detection pass
through untouched.
"""

from __future__ import annotations

import logging
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.lifecycle import Lifecycle
from server.metrics import REQUEST_DURATION, REQUESTS, TIME_TO_FIRST_TOKEN

__all__ = ["RequestContextMiddleware", "endpoint_label"]

access_log = logging.getLogger("server.access")

_ENDPOINTS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/strategies",
        "/health",
        "/ready",
        "/metrics",
    }
)
# Probes and scrapes arrive every few seconds from Kubernetes and Prometheus: logged at DEBUG.
_QUIET_PATHS = frozenset({"/health", "/ready", "/metrics"})
_REQUEST_ID_HEADER = b"x-request-id"
_MAX_REQUEST_ID_LEN = 128


def endpoint_label(path: str) -> str:
    """A low-cardinality metric label: the route, or `other` for anything unknown."""
    return path if path in _ENDPOINTS else "other"


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == _REQUEST_ID_HEADER:
            text = value.decode("latin-1").strip()
            if text and len(text) <= _MAX_REQUEST_ID_LEN and text.isprintable():
                return text
    return uuid.uuid4().hex


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, lifecycle: Lifecycle) -> None:
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        request_id = _request_id(scope)
        # vLLM's serving layer derives its engine request ids from this header: logs correlate.
        headers = [(k, v) for k, v in scope.get("headers", ()) if k != _REQUEST_ID_HEADER]
        headers.append((_REQUEST_ID_HEADER, request_id.encode("latin-1")))
        scope = dict(scope, headers=headers)
        scope.setdefault("state", {})["request_id"] = request_id

        path: str = scope["path"]
        endpoint = endpoint_label(path)
        counts_as_work = path.startswith("/v1/")
        start = time.perf_counter()
        status = 500
        streaming = False
        first_chunk_seen = False

        async def send_with_context(message: Message) -> None:
            nonlocal status, streaming, first_chunk_seen
            if message["type"] == "http.response.start":
                status = message["status"]
                out_headers = list(message.get("headers", ()))
                out_headers.append((_REQUEST_ID_HEADER, request_id.encode("latin-1")))
                message = dict(message, headers=out_headers)
                streaming = any(
                    k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                    for k, v in out_headers
                )
            elif message["type"] == "http.response.body" and streaming and not first_chunk_seen:
                body: bytes = message.get("body", b"")
                # SSE comment lines (":") are keep-alives, not tokens.
                if body and not body.startswith(b":"):
                    first_chunk_seen = True
                    TIME_TO_FIRST_TOKEN.labels(endpoint).observe(time.perf_counter() - start)
            await send(message)

        if counts_as_work:
            self.lifecycle.in_flight += 1
        try:
            await self.app(scope, receive, send_with_context)
        finally:
            if counts_as_work:
                self.lifecycle.in_flight -= 1
            elapsed = time.perf_counter() - start
            REQUESTS.labels(endpoint, str(status)).inc()
            REQUEST_DURATION.labels(endpoint).observe(elapsed)
            client = scope.get("client")
            access_log.log(
                logging.DEBUG if path in _QUIET_PATHS else logging.INFO,
                '%s "%s %s" %d %.1fms request_id=%s',
                f"{client[0]}:{client[1]}" if client else "-",
                scope["method"],
                path,
                status,
                elapsed * 1000,
                request_id,
            )
