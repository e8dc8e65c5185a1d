"""FastAPI dependencies shared by the routes: authentication and access to a ready engine."""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import Request

from server.api_keys import ApiKeys
from server.engine.vllm import VllmEngine
from server.exceptions import InvalidRequest, Unauthorized, Unavailable
from server.lifecycle import Lifecycle, Phase
from server.settings import Settings

__all__ = ["read_json_object", "require_api_key", "require_metrics_key", "serving_engine"]


def require_api_key(request: Request) -> None:
    """With API keys configured, require `Authorization: Bearer <key>`, compared in constant
    time with every key (`server.api_keys`). The key is never logged nor echoed."""
    keys: ApiKeys = request.app.state.api_keys
    if not keys.required:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not keys.matches(token.strip()):
        raise Unauthorized(
            "missing or invalid API key: send `Authorization: Bearer <key>`",
            code="invalid_api_key",
        )


def require_metrics_key(request: Request) -> None:
    """GET /metrics takes the API key too when `--metrics-auth` is on; else it stays open for
    Prometheus, as /health and /ready always do for Kubernetes' probes."""
    settings: Settings = request.app.state.settings
    if settings.metrics_auth:
        require_api_key(request)


def serving_engine(request: Request) -> VllmEngine:
    """The engine, if the server is ready to take new work; 503 otherwise."""
    lifecycle: Lifecycle = request.app.state.lifecycle
    if lifecycle.phase is Phase.DRAINING:
        raise Unavailable("the server is shutting down", code="server_shutting_down")
    engine: VllmEngine | None = request.app.state.engine
    if not lifecycle.accepting or engine is None:
        raise Unavailable("the model is still loading; retry shortly", code="engine_not_ready")
    if not engine.alive:
        refusal = getattr(engine, "refusal", None)  # gateway mode: the backend is down
        raise refusal() if refusal else Unavailable("the engine has stopped", code="engine_dead")
    return engine


async def read_json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 naming what is wrong with it."""
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from exc
    except RecursionError as exc:
        raise InvalidRequest("request body is nested too deeply", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object", code="invalid_json")
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(body):
        # Valid JSON, but not Unicode: the engine's encoder would fail on it later (a 500).
        raise InvalidRequest("request body has a lone UTF-16 surrogate escape (\\ud800-"
                             "\\udfff) outside a surrogate pair", code="invalid_json")
    return body


# A \uD800-\uDFFF escape: only then can a parsed string hold an unpaired surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(body: dict[str, Any]) -> bool:
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
