"""Refinery's own exceptions: the failures it answers on purpose, never a bug.

    RefineryError            base; carries an HTTP status, a `param` and a `code`
    ├── InvalidRequest       400: malformed request or a value out of bounds
    ├── Unauthorized         401: API keys are configured and the request has none, or a wrong one
    ├── PayloadTooLarge      413: the request body is over REFINERY_MAX_BODY_BYTES
    ├── Overloaded           429: the server holds as many engine sequences as it admits
    ├── Unavailable          503: still loading, draining for shutdown, or the engine died
    ├── RequestTimeout       504: the request ran past REFINERY_REQUEST_TIMEOUT; its work is aborted
    ├── ServingRefused       vLLM's serving layer answered with an error (its status kept)
    └── ClientDisconnected   499: the client went away before the answer was ready

`server.api.error_responses.classify` turns any exception (these, vLLM's, FastAPI's, and the
unexpected) into one OpenAI-shaped error, for a JSON response and for an SSE error event alike.
Messages that quote a client's value quote it through `excerpt`: bounded and escaped.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "EXCERPT_CHARS",
    "ClientDisconnected",
    "InvalidRequest",
    "Overloaded",
    "PayloadTooLarge",
    "RefineryError",
    "RequestTimeout",
    "ServingRefused",
    "Unauthorized",
    "Unavailable",
    "error_type_for_status",
    "excerpt",
]

# nginx's "client closed request": recorded in metrics and the access log, seen by nobody.
CLIENT_CLOSED_REQUEST = 499

_TYPE_BY_STATUS = {
    HTTPStatus.BAD_REQUEST: "invalid_request_error",
    HTTPStatus.UNAUTHORIZED: "authentication_error",
    HTTPStatus.FORBIDDEN: "permission_error",
    HTTPStatus.NOT_FOUND: "not_found_error",
    HTTPStatus.METHOD_NOT_ALLOWED: "invalid_request_error",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "invalid_request_error",
    HTTPStatus.UNPROCESSABLE_ENTITY: "invalid_request_error",
    HTTPStatus.TOO_MANY_REQUESTS: "rate_limit_error",
    HTTPStatus.NOT_IMPLEMENTED: "not_implemented_error",
    HTTPStatus.SERVICE_UNAVAILABLE: "service_unavailable_error",
    HTTPStatus.GATEWAY_TIMEOUT: "timeout_error",
}

# How much of a client's value an error message may quote.
EXCERPT_CHARS = 100


def error_type_for_status(status: int) -> str:
    """The OpenAI error `type` that goes with an HTTP status."""
    if status == CLIENT_CLOSED_REQUEST:
        return "client_closed_request"
    try:
        return _TYPE_BY_STATUS.get(HTTPStatus(status), "server_error")
    except ValueError:
        return "server_error"


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """A client's value as an error message may quote it: its `repr` (quotes, control and
    non-printable characters escaped), cut to `limit` characters with `…` marking the cut, so an
    error never reflects a large or hostile input back."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class RefineryError(Exception):
    """Base of every error Refinery answers on purpose (never a bug)."""

    status: int = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    @property
    def type(self) -> str:
        return error_type_for_status(self.status)

    @property
    def headers(self) -> Mapping[str, str]:
        """Response headers that go with this error (none unless a subclass says)."""
        return {}


class InvalidRequest(RefineryError):
    """The request is malformed or a value is out of bounds; `param` names the field."""

    status = HTTPStatus.BAD_REQUEST


class Unauthorized(RefineryError):
    """API keys are configured and the request carries none, or a wrong one."""

    status = HTTPStatus.UNAUTHORIZED


class PayloadTooLarge(RefineryError):
    """The request body is larger than the server accepts (REFINERY_MAX_BODY_BYTES): refused
    from its Content-Length, or as soon as the bytes received pass the limit."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class Overloaded(RefineryError):
    """The server already holds as many engine sequences as it admits: refused at once, before
    any work starts, so that the client (the openai SDK retries 429s by itself) comes back
    after `Retry-After` seconds or goes to another replica. Nothing of the request ran."""

    status = HTTPStatus.TOO_MANY_REQUESTS

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, code="overloaded")
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> Mapping[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class RequestTimeout(RefineryError):
    """The request ran longer than REFINERY_REQUEST_TIMEOUT: every engine request it started
    has been aborted. A 504, or an SSE error event when its stream had already begun."""

    status = HTTPStatus.GATEWAY_TIMEOUT

    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            f"the request ran past this server's limit of {timeout_s:g} s and was aborted; "
            "ask for less work (fewer samples, a lower max_tokens) or retry later",
            code="request_timeout",
        )


class Unavailable(RefineryError):
    """The server is not ready yet, is draining before shutdown, or its engine has stopped."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class ClientDisconnected(RefineryError):
    """The client closed the connection before the response was ready; its work is cancelled.

    Answered with 499 only for the access log and metrics: nobody is left to read it."""

    status = CLIENT_CLOSED_REQUEST

    def __init__(self) -> None:
        super().__init__("client closed request", code="client_closed")


class ServingRefused(RefineryError):
    """vLLM's serving layer refused the request (an `ErrorResponse`); its status is kept."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message, param=param, code=code)
        self.status = status

    @classmethod
    def from_response(cls, error: Any) -> ServingRefused:
        """From vLLM's `ErrorResponse` (status in `error.code`, as vLLM writes it)."""
        status = int(error.error.code)
        return cls(status, error.error.message, param=error.error.param,
                   code="model_not_found" if status == HTTPStatus.NOT_FOUND else None)
