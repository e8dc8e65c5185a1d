"""FastAPI dependencies shared by the routes: authentication and access to a ready engine."""

from __future__ import annotations

import hmac
import json
from typing import Any

from fastapi import Request

from server.engine.vllm import VllmEngine
from server.exceptions import InvalidRequest, Unauthorized, Unavailable
from server.lifecycle import Lifecycle, Phase
from server.settings import Settings

__all__ = ["read_json_object", "require_api_key", "serving_engine"]


def require_api_key(request: Request) -> None:
    """With API keys configured, require `Authorization: Bearer <key>` (constant-time compare)."""
    settings: Settings = request.app.state.settings
    if not settings.api_keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    presented = token.strip().encode() if scheme.lower() == "bearer" else b""
    # Compare against every key so the time taken does not tell which one nearly matched.
    matched = False
    for key in settings.api_keys:
        matched |= hmac.compare_digest(presented, key.encode())
    if not matched:
        raise Unauthorized(
            "missing or invalid API key: send `Authorization: Bearer <key>`",
            code="invalid_api_key",
        )


def serving_engine(request: Request) -> VllmEngine:
    """The engine, if the server is ready to take new work; 503 otherwise."""
    lifecycle: Lifecycle = request.app.state.lifecycle
    if lifecycle.phase is Phase.DRAINING:
        raise Unavailable("the server is shutting down", code="server_shutting_down")
    engine: VllmEngine | None = request.app.state.engine
    if not lifecycle.accepting or engine is None:
        raise Unavailable("the model is still loading; retry shortly", code="engine_not_ready")
    if not engine.alive:
        raise Unavailable("the engine has stopped", code="engine_dead")
    return engine


async def read_json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 naming what is wrong with it."""
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object", code="invalid_json")
    return body
