"""One path for both generation endpoints: parse the body, pick plain or strategy, run it.

Plain requests go to vLLM's own serving object unchanged; strategy requests to
`server.api.strategy_requests`. The routes only say which request model and which vLLM handler."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest

from server.api.cancellation import cancel_on_disconnect
from server.api.dependencies import read_json_object
from server.api.error_responses import invalid_from_validation
from server.api.responses import render_serving_result
from server.api.strategy_requests import run_strategy_request
from server.api.strategy_selection import ServerCaps, resolve_strategy
from server.engine.vllm import VllmEngine
from server.exceptions import InvalidRequest
from server.settings import Settings
from strategies import PRESETS

__all__ = ["KNOWN_CHAT_ROLES", "check_chat_roles", "handle_generation", "parse_body"]

GenerationRequest = TypeVar("GenerationRequest", ChatCompletionRequest, CompletionRequest)

ModelT = TypeVar("ModelT", bound=BaseModel)

# OpenAI's roles. vLLM 0.32 itself accepts any role string (e.g. "wizard") and renders it into
# the chat template; Refinery refuses unknown roles instead of silently prompting with them.
KNOWN_CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def parse_body(model: type[ModelT], body: dict[str, Any]) -> ModelT:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise invalid_from_validation(exc) from exc


def check_chat_roles(messages: list[Any]) -> None:
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
        if role not in KNOWN_CHAT_ROLES:
            raise InvalidRequest(
                f"messages[{index}].role {role!r} is not one of {sorted(KNOWN_CHAT_ROLES)}",
                param=f"messages.{index}.role",
                code="invalid_value",
            )



async def handle_generation(
    raw_request: Request,
    engine: VllmEngine,
    request_model: type[GenerationRequest],
    serve_plain: Callable[[GenerationRequest, Request], Awaitable[Any]],
) -> Response:
    settings: Settings = raw_request.app.state.settings
    body = await read_json_object(raw_request)
    caps = ServerCaps(settings.max_samples, settings.max_refine_iterations)
    resolved = resolve_strategy(body, PRESETS, caps)
    request = parse_body(request_model, body)
    if isinstance(request, ChatCompletionRequest):
        check_chat_roles(request.messages)
    if resolved is None:
        result = await cancel_on_disconnect(raw_request, serve_plain(request, raw_request))
        return render_serving_result(result)
    return await run_strategy_request(
        engine, request, resolved, raw_request, settings.strategy_keepalive
    )
