"""Driving the app in process: an httpx client on `ASGITransport`, request bodies, and reading
what comes back (SSE events, OpenAI error bodies, the request counter)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
from fastapi import FastAPI
from prometheus_client import REGISTRY

from tests.api.stub_engine import SERVED_MODEL

__all__ = [
    "CHAT",
    "COMPLETIONS",
    "AppFactory",
    "body_for",
    "client_for",
    "error_of",
    "requests_counted",
    "sse_data",
    "sse_events",
]

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"

# The `make_app` fixture: the app on the stub engine; keywords are `Settings` fields.
AppFactory = Callable[..., FastAPI]


def client_for(app: FastAPI) -> httpx.AsyncClient:
    """A client on the app itself; its lifespan (the vLLM load) does not run."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def body_for(path: str, **fields: Any) -> dict[str, Any]:
    """A minimal valid body for `path` (chat or completions), with `fields` added."""
    if path == CHAT:
        return {"model": SERVED_MODEL, "messages": [{"role": "user", "content": "2+2?"}],
                **fields}
    return {"model": SERVED_MODEL, "prompt": "2+2=", **fields}


def sse_events(text: str) -> list[str]:
    """The events of an SSE body in order, each as sent (`: comment` or `data: ...`)."""
    return [event for event in text.split("\n\n") if event]


def sse_data(event: str) -> Any:
    assert event.startswith("data: "), event
    return json.loads(event.removeprefix("data: "))


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The `error` object of an OpenAI error body, checked to hold exactly its four keys."""
    body = response.json()
    assert list(body) == ["error"], body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def requests_counted(endpoint: str, status: int) -> float:
    """`refinery_requests_total{endpoint, status}` now (0 before its first increment)."""
    value = REGISTRY.get_sample_value(
        "refinery_requests_total", {"endpoint": endpoint, "status": str(status)})
    return value or 0.0
