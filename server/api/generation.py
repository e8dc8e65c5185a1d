"""One path for both generation endpoints: parse the body, pick plain or strategy, admit it,
run it within the request's time limit.

Plain requests go to vLLM's own serving object unchanged; strategy requests to
`server.api.strategy_requests`. The routes only say which request model and which vLLM handler.
Every refusal (a bad body, a cap, the admission bound: `server.admission`) comes before any work
starts and before a 200 is sent; the sequences a request was admitted with are held until its
response has ended, however it ends.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest

from server.admission import AdmissionControl, release_when_sent
from server.api.cancellation import cancel_on_disconnect
from server.api.deadlines import Deadline, run_before, stream_before
from server.api.dependencies import read_json_object
from server.api.error_responses import invalid_from_validation
from server.api.responses import render_serving_result
from server.api.strategy_requests import (
    StrategyLimits,
    check_strategy_compatible,
    run_strategy_request,
)
from server.api.strategy_selection import ServerCaps, resolve_strategy
from server.engine.vllm import VllmEngine
from server.exceptions import InvalidRequest, excerpt
from server.metrics import ADMISSION_REJECTED
from server.settings import Settings
from strategies import PRESETS

__all__ = [
    "KNOWN_CHAT_ROLES",
    "check_chat_roles",
    "check_message_count",
    "handle_generation",
    "parse_body",
    "plain_sequences",
]

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
                f"messages[{index}].role {excerpt(role)} is not one of "
                f"{sorted(KNOWN_CHAT_ROLES)}",
                param=f"messages.{index}.role",
                code="invalid_value",
            )


def check_message_count(body: dict[str, Any], max_messages: int) -> None:
    """A chat body with more than `max_messages` messages is refused before it is parsed."""
    messages = body.get("messages")
    if isinstance(messages, list) and len(messages) > max_messages:
        ADMISSION_REJECTED.labels("over_cap").inc()
        raise InvalidRequest(
            f"messages: {len(messages)} messages, over this server's cap of {max_messages}",
            param="messages", code="too_many_messages",
        )


def plain_sequences(request: ChatCompletionRequest | CompletionRequest) -> int:
    """The engine sequences a plain request occupies: `n` per prompt (a completion request may
    carry a batch of prompts: a list of strings or of token lists)."""
    prompts = 1
    prompt = getattr(request, "prompt", None)
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        prompts = len(prompt)
    return max(1, request.n or 1) * prompts


def _check_sequence_cap(slots: int, cap: int) -> None:
    if slots > cap:
        ADMISSION_REJECTED.labels("over_cap").inc()
        raise InvalidRequest(
            f"n: this request asks for {slots} sequences (n × prompts), over this server's cap "
            f"of {cap}",
            param="n", code="over_server_cap",
        )


async def _serve_plain(
    raw_request: Request,
    request: GenerationRequest,
    serve_plain: Callable[[GenerationRequest, Request], Awaitable[Any]],
    deadline: Deadline,
) -> Response:
    """vLLM's serving call within the deadline; a stream it returns is cut at the deadline."""
    work = run_before(deadline, serve_plain(request, raw_request))
    result = await cancel_on_disconnect(raw_request, work)
    if isinstance(result, Response):  # gateway mode: the backend's answer, as it came
        return result
    if isinstance(result, AsyncGenerator):
        result = stream_before(deadline, result)
    return render_serving_result(result)


async def handle_generation(
    raw_request: Request,
    engine: VllmEngine,
    request_model: type[GenerationRequest],
    serve_plain: Callable[[GenerationRequest, Request], Awaitable[Any]],
) -> Response:
    settings: Settings = raw_request.app.state.settings
    admission: AdmissionControl = raw_request.app.state.admission
    deadline = Deadline(settings.request_timeout)
    body = await read_json_object(raw_request)
    admission.refuse_when_full()
    check_message_count(body, settings.max_messages)
    caps = ServerCaps(settings.max_samples, settings.max_refine_iterations)
    try:
        resolved = resolve_strategy(body, PRESETS, caps)
    except InvalidRequest as exc:
        if exc.code == "over_server_cap":
            ADMISSION_REJECTED.labels("over_cap").inc()
        raise
    request = parse_body(request_model, body)
    if isinstance(request, ChatCompletionRequest):
        check_chat_roles(request.messages)
    if resolved is None:
        slots = plain_sequences(request)
        _check_sequence_cap(slots, settings.max_samples)
        lease = admission.admit(slots, param="n")
    else:
        check_strategy_compatible(request, resolved)
        lease = admission.admit(resolved.options.sample_budget(),
                                param=f"strategy.{resolved.options.budget_option()}")
    try:
        if resolved is None:
            response = await _serve_plain(raw_request, request, serve_plain, deadline)
        elif getattr(engine, "forwards_strategies", False):
            # Gateway mode with a Refinery backend: it runs the strategy in its own engine,
            # and its answer is proxied as a plain one is (server.backend.backend_kind).
            response = await _serve_plain(raw_request, request, engine.forward_strategy,
                                          deadline)
        else:
            limits = StrategyLimits(
                keepalive_s=settings.strategy_keepalive,
                deadline=deadline,
                max_tokens=settings.max_strategy_tokens,
                max_model_len=admission.limits.max_model_len if admission.limits else None,
            )
            response = await run_strategy_request(engine, request, resolved, raw_request, limits)
    except BaseException:
        lease.release()
        raise
    return release_when_sent(response, lease)
