"""Refinery's error hierarchy. One handler (server.api.errors) turns these into OpenAI-shaped
`{"error": {"message", "type", "param", "code"}}` responses with the right HTTP status."""

from __future__ import annotations

from http import HTTPStatus

__all__ = [
    "InvalidRequest",
    "NotFound",
    "Overloaded",
    "RefineryError",
    "Unauthorized",
    "Unavailable",
    "error_type_for_status",
]

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
}


def error_type_for_status(status: int) -> str:
    """The OpenAI error `type` that goes with an HTTP status."""
    try:
        return _TYPE_BY_STATUS.get(HTTPStatus(status), "server_error")
    except ValueError:
        return "server_error"


class RefineryError(Exception):
    """Base of every error Refinery answers on purpose (never a bug)."""

    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    @property
    def type(self) -> str:
        return error_type_for_status(self.status)


class InvalidRequest(RefineryError):
    """The request is malformed or a value is out of bounds; `param` names the field."""

    status = HTTPStatus.BAD_REQUEST


class Unauthorized(RefineryError):
    """API keys are configured and the request carries none, or a wrong one."""

    status = HTTPStatus.UNAUTHORIZED


class NotFound(RefineryError):
    """The model (or another named resource) does not exist here."""

    status = HTTPStatus.NOT_FOUND


class Overloaded(RefineryError):
    """The engine's queue is over its bound; the client should retry later."""

    status = HTTPStatus.TOO_MANY_REQUESTS

    def __init__(self, message: str, *, retry_after_s: int = 1, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class Unavailable(RefineryError):
    """The server is not ready yet, or is draining before shutdown."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
