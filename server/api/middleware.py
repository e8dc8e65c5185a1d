"""Per-request bookkeeping as a pure ASGI middleware: request id, access log, metrics, the
in-flight count that the SIGTERM drain waits on, and the last-resort answer to an unexpected
exception (a 500 that still carries the request id). Beside it, the request body size limit.

Pure ASGI (not BaseHTTPMiddleware) so that streaming responses and disconnect detection pass
through untouched.
"""

from __future__ import annotations

import logging
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.error_responses import classify, log_if_server_error
from server.exceptions import PayloadTooLarge
from server.lifecycle import Lifecycle
from server.metrics import ADMISSION_REJECTED, REQUEST_DURATION, REQUESTS, TIME_TO_FIRST_TOKEN

__all__ = ["BodySizeLimitMiddleware", "RequestContextMiddleware", "endpoint_label"]

access_log = logging.getLogger("server.access")

# Probes and scrapes arrive every few seconds from Kubernetes and Prometheus: logged at DEBUG.
_QUIET_PATHS = frozenset({"/health", "/ready", "/metrics"})
_REQUEST_ID_HEADER = b"x-request-id"
_MAX_REQUEST_ID_LEN = 128
# An access log line quotes the path at most this long (escaped): a line stays one bounded line.
_MAX_LOGGED_PATH_LEN = 200


def endpoint_label(scope: Scope) -> str:
    """A low-cardinality metric label: the path template of the route the router matched
    (set in the scope as it routes), or `other` when none matched."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "other"


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == _REQUEST_ID_HEADER:
            text = value.decode("latin-1").strip()
            if text and len(text) <= _MAX_REQUEST_ID_LEN and text.isprintable():
                return text
    return uuid.uuid4().hex


def _loggable_path(path: str) -> str:
    """The path as one bounded log line may carry it: control characters and non-ASCII escaped
    (no forged log lines), cut at `_MAX_LOGGED_PATH_LEN`."""
    text = path.encode("ascii", "backslashreplace").decode("ascii")
    text = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)
    if len(text) > _MAX_LOGGED_PATH_LEN:
        text = text[: _MAX_LOGGED_PATH_LEN - 3] + "..."
    return text


class BodySizeLimitMiddleware:
    """413 for a request body over `max_bytes`: at once from its Content-Length, or as soon as
    the bytes received pass the limit (a chunked body, or a Content-Length that lies). The
    route reading the body then gets `PayloadTooLarge`, which is answered like any error;
    nothing past the limit is buffered."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> PayloadTooLarge:
        ADMISSION_REJECTED.labels("body_too_large").inc()
        return PayloadTooLarge(
            f"the request body is larger than this server accepts ({self.max_bytes} bytes)",
            code="request_too_large",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0  # h11 refuses a malformed one before it gets here
                if declared > self.max_bytes:
                    response = classify(self._too_large()).response()
                    await response(scope, receive, send)
                    return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, counting_receive, send)


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
        counts_as_work = path.startswith("/v1/")
        start = time.perf_counter()
        status = 500
        started = False
        streaming = False
        first_chunk_seen = False

        async def send_with_context(message: Message) -> None:
            nonlocal status, started, streaming, first_chunk_seen
            if message["type"] == "http.response.start":
                status, started = message["status"], True
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
                    TIME_TO_FIRST_TOKEN.labels(endpoint_label(scope)).observe(
                        time.perf_counter() - start)
            await send(message)

        if counts_as_work:
            self.lifecycle.in_flight += 1
        try:
            await self.app(scope, receive, send_with_context)
        except Exception as exc:  # noqa: BLE001  the exception handlers did not claim it
            error = classify(exc)
            log_if_server_error(error, exc, request_id)
            if not started:
                response = error.response()
                await response(scope, receive, send_with_context)
            # Not re-raised: Starlette's outer middleware would log it a second time, and a
            # response already started cannot change its status anyway.
        finally:
            if counts_as_work:
                self.lifecycle.in_flight -= 1
            endpoint = endpoint_label(scope)
            elapsed = time.perf_counter() - start
            REQUESTS.labels(endpoint, str(status)).inc()
            REQUEST_DURATION.labels(endpoint).observe(elapsed)
            client = scope.get("client")
            access_log.log(
                logging.DEBUG if path in _QUIET_PATHS else logging.INFO,
                '%s "%s %s" %d %.1fms request_id=%s',
                f"{client[0]}:{client[1]}" if client else "-",
                scope["method"],
                _loggable_path(path),
                status,
                elapsed * 1000,
                request_id,
            )
