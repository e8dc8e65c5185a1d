"""How a backend's failures reach the client: as Refinery's own OpenAI-shaped errors.

- the backend cannot be reached (connection refused, connect timeout, after the bounded
  retries): 503 with `Retry-After`, so clients and load balancers come back or go elsewhere;
- the backend accepted the request but sent nothing for `REFINERY_BACKEND_TIMEOUT` seconds: 504;
- the connection broke mid-answer, or the backend ended a stream early: 502;
- the backend answered with an error status (a 4xx above all): its status and message are kept
  (`ServingRefused`), as `vllm serve` would have answered them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus

from server.exceptions import RefineryError, ServingRefused, Unavailable

__all__ = [
    "BACKEND_RETRY_AFTER_S",
    "BackendFailed",
    "BackendTimeout",
    "BackendUnavailable",
    "refusal_from_body",
]

# What a client refused because the backend is down is told to wait: a restarting backend pod
# takes seconds, not milliseconds.
BACKEND_RETRY_AFTER_S = 5


class BackendUnavailable(Unavailable):
    """The backend could not be reached; nothing of the request ran there."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"the model backend is unreachable ({detail}); retry shortly",
                         code="backend_unavailable")

    @property
    def headers(self) -> Mapping[str, str]:
        return {"Retry-After": str(BACKEND_RETRY_AFTER_S)}


class BackendTimeout(RefineryError):
    """The backend went silent for longer than REFINERY_BACKEND_TIMEOUT; the request to it is
    closed (vLLM aborts a request whose connection closes)."""

    status = HTTPStatus.GATEWAY_TIMEOUT

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"the model backend sent nothing for {timeout_s:g} s; the request was "
                         "abandoned", code="backend_timeout")


class BackendFailed(RefineryError):
    """The backend's answer broke off (connection lost, a stream ended before its samples)."""

    status = HTTPStatus.BAD_GATEWAY

    def __init__(self, detail: str) -> None:
        super().__init__(f"the model backend failed: {detail}", code="backend_error")


def refusal_from_body(status: int, content: bytes) -> ServingRefused:
    """A backend's error answer, status kept, message and param taken from its OpenAI-shaped
    body (`{"error": {...}}`; vLLM writes the status into `code`)."""
    message, param, code = f"the model backend answered {status}", None, None
    try:
        error = json.loads(content).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        message = str(error.get("message") or message)
        param = error.get("param") if isinstance(error.get("param"), str) else None
        code = error.get("code") if isinstance(error.get("code"), str) else None
    if code is None and status == HTTPStatus.NOT_FOUND:
        code = "model_not_found"
    return ServingRefused(status, message, param=param, code=code)
