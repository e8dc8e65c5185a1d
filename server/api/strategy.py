"""Running a strategy request: check the request fits, render the prompt once, draw samples
through a VllmSampler, record metrics, and answer as JSON or as an SSE stream."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.entrypoints.serve.utils.api_utils import get_max_tokens
from vllm.renderers.inputs.preprocess import extract_prompt_components

from server.api.cancellation import cancel_on_disconnect
from server.api.errors import from_vllm_error
from server.api.render import StrategyOutcome, strategy_body, strategy_stream_events
from server.engine.vllm import VllmEngine
from server.errors import InvalidRequest, RefineryError
from server.metrics import SAMPLES_SAVED, STRATEGY_REQUESTS, STRATEGY_SAMPLES, SUBREQUEST_TOKENS
from server.protocol import ResolvedStrategy
from server.sampler import VllmSampler

__all__ = ["run_strategy_request"]

logger = logging.getLogger(__name__)

# Below this a temperature is greedy sampling in vLLM: every sample would be the same.
_GREEDY_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class _Prepared:
    sampler: VllmSampler
    kind: str  # "chat" | "completion"
    model: str


def _check_compatible(request: ChatCompletionRequest | CompletionRequest) -> None:
    """Request fields a strategy cannot honour are refused, never silently dropped."""
    if (request.n or 1) > 1:
        raise InvalidRequest(
            "n > 1 cannot be combined with a strategy: a strategy returns one answer chosen "
            "from its own samples (use the strategy's max_samples / n option instead)",
            param="n", code="unsupported_with_strategy",
        )
    if getattr(request, "use_beam_search", False):
        raise InvalidRequest("beam search cannot be combined with a strategy",
                             param="use_beam_search", code="unsupported_with_strategy")
    logprobs = request.logprobs
    if logprobs not in (None, False) or getattr(request, "top_logprobs", None):
        raise InvalidRequest("logprobs are not returned with a strategy; the response's "
                             "strategy.candidates carry each sample's certainty instead",
                             param="logprobs", code="unsupported_with_strategy")
    if getattr(request, "tools", None):
        raise InvalidRequest("tools cannot be combined with a strategy yet",
                             param="tools", code="unsupported_with_strategy")
    if isinstance(request, CompletionRequest) and (request.echo or request.suffix):
        raise InvalidRequest("echo and suffix cannot be combined with a strategy",
                             param="echo" if request.echo else "suffix",
                             code="unsupported_with_strategy")


async def _prepare(
    engine: VllmEngine,
    request: ChatCompletionRequest | CompletionRequest,
    resolved: ResolvedStrategy,
    request_id: str,
) -> _Prepared | ErrorResponse:
    if isinstance(request, ChatCompletionRequest):
        serving: Any = engine.chat
        rendered = await serving.render_chat_request(request)
        if isinstance(rendered, ErrorResponse):
            return rendered
        _, engine_inputs = rendered
        kind = "chat"
    else:
        serving = engine.completion
        engine_inputs = await serving.render_completion_request(request)
        if isinstance(engine_inputs, ErrorResponse):
            return engine_inputs
        kind = "completion"
    if len(engine_inputs) != 1:
        raise InvalidRequest("a strategy request takes one prompt", param="prompt",
                             code="unsupported_with_strategy")
    (engine_input,) = engine_inputs
    prompt_ids = extract_prompt_components(serving.model_config, engine_input).token_ids or []
    max_tokens = get_max_tokens(
        serving.model_config.max_model_len,
        getattr(request, "max_completion_tokens", None) or request.max_tokens,
        len(prompt_ids),
        serving.default_sampling_params,
        serving.override_max_tokens,
    )
    params = request.to_sampling_params(max_tokens, serving.default_sampling_params)
    if resolved.options.sample_budget() > 1 and params.temperature < _GREEDY_TEMPERATURE:
        raise InvalidRequest(
            "temperature 0 (greedy) would draw identical samples: a sampling strategy needs "
            "temperature > 0 (0.7 is typical)",
            param="temperature", code="greedy_strategy",
        )
    sampler = VllmSampler(engine.async_llm, engine_input, params, request_id, len(prompt_ids))
    return _Prepared(sampler, kind, serving.models.model_name())


async def _run(prepared: _Prepared, resolved: ResolvedStrategy) -> StrategyOutcome:
    started = time.perf_counter()
    name = resolved.strategy.name
    STRATEGY_REQUESTS.labels(name).inc()
    SUBREQUEST_TOKENS.labels("prompt").inc(prepared.sampler.usage.prompt_tokens)
    result = await resolved.strategy.run(prepared.sampler, resolved.options)
    budget = resolved.options.sample_budget()
    STRATEGY_SAMPLES.labels(name).observe(len(result.samples))
    SAMPLES_SAVED.labels(name).inc(budget - len(result.samples))
    return StrategyOutcome(
        result=result,
        resolved=resolved,
        usage=prepared.sampler.usage,
        certainty_method=prepared.sampler.certainty_method,
        elapsed_ms=(time.perf_counter() - started) * 1000,
        kind=prepared.kind,
        model=prepared.model,
        response_id=f"{'chatcmpl' if prepared.kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}",
        created=int(time.time()),
    )


async def _stream(
    prepared: _Prepared, resolved: ResolvedStrategy, include_usage: bool, keepalive_s: float
) -> AsyncGenerator[str, None]:
    """SSE comments while the strategy works, then the answer as ordinary chunks.

    A client that goes away stops this generator; the `finally` cancels the strategy task,
    whose own `finally` aborts every outstanding sub-request.
    """
    task = asyncio.create_task(_run(prepared, resolved))
    try:
        yield ": refinery: strategy running\n\n"
        while not task.done():
            await asyncio.wait({task}, timeout=keepalive_s)
            if not task.done():
                yield ": keep-alive\n\n"
        try:
            outcome = task.result()
        except Exception as exc:
            # Headers are sent: the only way left to report a failure is an error event.
            if isinstance(exc, RefineryError):
                error = {"message": exc.message, "type": exc.type, "param": exc.param,
                         "code": exc.code}
            else:
                logger.exception("strategy failed mid-stream", exc_info=exc)
                error = {"message": "internal server error", "type": "server_error",
                         "param": None, "code": "internal_error"}
            yield f"data: {json.dumps({'error': error})}\n\n"
            yield "data: [DONE]\n\n"
            return
        for event in strategy_stream_events(outcome, include_usage):
            yield event
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def run_strategy_request(
    engine: VllmEngine,
    request: ChatCompletionRequest | CompletionRequest,
    resolved: ResolvedStrategy,
    raw_request: Request,
    keepalive_s: float,
) -> Response:
    _check_compatible(request)
    request_id = f"strategy-{uuid.uuid4().hex}"
    prepared = await _prepare(engine, request, resolved, request_id)
    if isinstance(prepared, ErrorResponse):
        return from_vllm_error(prepared)
    if request.stream:
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        return StreamingResponse(
            _stream(prepared, resolved, include_usage, keepalive_s),
            media_type="text/event-stream",
        )
    outcome = await cancel_on_disconnect(raw_request, _run(prepared, resolved))
    return JSONResponse(strategy_body(outcome))
