"""Running a strategy request: refuse what a strategy cannot honour, open a sampler on the
engine (every check done before a 200 is sent, the token cap among them), run the strategy
within the request's deadline, always abort what is left, record metrics, and answer as JSON or
as an SSE stream (a failure after the 200, a timeout included, as an SSE error event).

Admission (`server.admission`) has already reserved the request's whole sample budget when it
gets here (`server.api.generation`).

Tools: the strategies that vote or select over tool calls (their options are `ToolVoteOptions`:
self_consistency with any stop rule, best_of_n, deepconf, dsc) take `tools`; the engine reads
each sample's calls with the served model's vLLM tool parser (server.engine.tool_call_parsing).
The refinement strategies refuse them (400): they rewrite a draft through critique turns,
which a tool call does not survive. A request decoded as JSON
(`response_format` json_object / json_schema) compares its answers as JSON unless it chose an
`answer_format`."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
import warnings
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest

from server.api.cancellation import cancel_on_disconnect
from server.api.deadlines import Deadline, run_before
from server.api.error_responses import classify, log_if_server_error
from server.api.responses import StrategyOutcome, strategy_body, strategy_stream_events
from server.api.strategy_selection import ResolvedStrategy
from server.engine.tool_call_parsing import request_tool_choice
from server.engine.vllm import OpenedSampler
from server.exceptions import InvalidRequest
from server.metrics import (
    ADMISSION_REJECTED,
    DSC_PREALLOCATION,
    REFINE_ITERATIONS,
    REFINE_ROUTES,
    SAMPLES_SAVED,
    SAMPLES_TERMINATED,
    STRATEGY_REQUESTS,
    STRATEGY_SAMPLES,
)
from strategies.base import CertaintySource
from strategies.tool_votes import ToolVoteOptions

__all__ = [
    "SamplerFactory",
    "StrategyLimits",
    "check_strategy_compatible",
    "run_strategy_request",
    "strategy_token_budget",
    "with_json_answers",
]

# Below this a temperature is greedy sampling in vLLM: every sample would be the same.
_GREEDY_TEMPERATURE = 1e-5


class SamplerFactory(Protocol):
    """What the strategy path needs of an engine (`VllmEngine`, or a test's stub)."""

    async def open_sampler(
        self, request: ChatCompletionRequest | CompletionRequest, request_id: str, slots: int,
        certainty_source: CertaintySource | None = None,
    ) -> OpenedSampler: ...


@dataclass(frozen=True)
class StrategyLimits:
    """What bounds one strategy request besides its sample budget."""

    keepalive_s: float  # seconds between SSE keep-alives
    deadline: Deadline  # REFINERY_REQUEST_TIMEOUT from its arrival
    max_tokens: int  # REFINERY_MAX_STRATEGY_TOKENS
    # The engine's context length (None until an engine has loaded): a sample's max_tokens
    # when the request sets none.
    max_model_len: int | None


def _requested_max_tokens(request: ChatCompletionRequest | CompletionRequest) -> int | None:
    if isinstance(request, ChatCompletionRequest) and request.max_completion_tokens is not None:
        return request.max_completion_tokens
    with warnings.catch_warnings():
        # Chat's `max_tokens` is deprecated in favour of max_completion_tokens, and still counts.
        warnings.simplefilter("ignore", DeprecationWarning)
        return request.max_tokens


def strategy_token_budget(
    request: ChatCompletionRequest | CompletionRequest, samples: int, prompt_tokens: int,
    max_model_len: int | None,
) -> int | None:
    """The most tokens a strategy request may generate: samples × max_tokens. Without
    max_tokens a sample may run to the end of the context, as vLLM lets it, so the context left
    after the prompt counts (None when no engine has said how long its context is)."""
    per_sample = _requested_max_tokens(request)
    if per_sample is None:
        if max_model_len is None:
            return None
        per_sample = max(0, max_model_len - prompt_tokens)
    return samples * per_sample


def _check_token_budget(
    request: ChatCompletionRequest | CompletionRequest, resolved: ResolvedStrategy,
    prompt_tokens: int, limits: StrategyLimits,
) -> None:
    samples = resolved.options.sample_budget()
    budget = strategy_token_budget(request, samples, prompt_tokens, limits.max_model_len)
    if budget is not None and budget > limits.max_tokens:
        ADMISSION_REJECTED.labels("over_cap").inc()
        requested = _requested_max_tokens(request)
        per_sample = (f"max_tokens {requested}" if requested is not None else
                      "no max_tokens, so the context left after the prompt "
                      f"({budget // max(1, samples)} tokens)")
        raise InvalidRequest(
            f"this strategy may generate {budget} tokens ({samples} samples × {per_sample}), "
            f"over this server's cap of {limits.max_tokens}: set a lower max_tokens or fewer "
            "samples",
            param="max_tokens", code="over_token_cap",
        )


def check_strategy_compatible(
    request: ChatCompletionRequest | CompletionRequest, resolved: ResolvedStrategy
) -> None:
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
    if request_tool_choice(request) is not None and not isinstance(resolved.options,
                                                                   ToolVoteOptions):
        raise InvalidRequest(
            f"tools cannot be combined with the {resolved.strategy.name} strategy: it does not "
            "vote over tool calls (self_consistency, best_of_n, deepconf and dsc do; or send "
            "tool_choice \"none\")", param="tools", code="unsupported_with_strategy")
    if isinstance(request, CompletionRequest) and (request.echo or request.suffix):
        raise InvalidRequest("echo and suffix cannot be combined with a strategy",
                             param="echo" if request.echo else "suffix",
                             code="unsupported_with_strategy")


def _decodes_json(request: ChatCompletionRequest | CompletionRequest) -> bool:
    """Whether every sample is decoded as JSON (response_format, or vLLM's structured_outputs
    with a JSON constraint)."""
    response_format = getattr(request, "response_format", None)
    if getattr(response_format, "type", None) in ("json_object", "json_schema"):
        return True
    constraint = getattr(request, "structured_outputs", None)
    return constraint is not None and (constraint.json is not None or
                                       bool(constraint.json_object))


def with_json_answers(
    request: ChatCompletionRequest | CompletionRequest, resolved: ResolvedStrategy
) -> ResolvedStrategy:
    """A request decoded as JSON votes on the parsed JSON (`answer_format: "json"`) unless it
    chose an answer_format other than auto."""
    if resolved.options.answer_format != "auto" or not _decodes_json(request):
        return resolved
    options = resolved.options.model_copy(update={"answer_format": "json"})
    return dataclasses.replace(resolved, options=options)


async def _open(
    engine: SamplerFactory,
    request: ChatCompletionRequest | CompletionRequest,
    resolved: ResolvedStrategy,
) -> OpenedSampler:
    options = resolved.options
    opened = await engine.open_sampler(request, f"strategy-{uuid.uuid4().hex}",
                                       options.sample_budget(), options.certainty_source())
    if request_tool_choice(request) is not None and not opened.reads_tool_calls:
        raise InvalidRequest(
            "tools cannot be combined with a strategy on this server: it cannot read tool "
            "calls from the strategy's samples (gateway mode has no tool parser in process)",
            param="tools", code="unsupported_with_strategy")
    if options.parallel_samples() > 1 and opened.temperature < _GREEDY_TEMPERATURE:
        raise InvalidRequest(
            "temperature 0 (greedy) would draw identical samples: this strategy draws "
            f"{options.parallel_samples()} samples of one prompt and needs temperature > 0 "
            "(0.7 is typical)",
            param="temperature", code="greedy_strategy",
        )
    return opened


async def _run(opened: OpenedSampler, resolved: ResolvedStrategy) -> StrategyOutcome:
    """Run the strategy. This layer created the sampler, so it owns the cleanup: whatever the
    strategy leaves outstanding (an error, a cancellation, or simply not aborting) is aborted
    here; a strategy's own early abort is only an optimisation."""
    started = time.perf_counter()
    name = resolved.strategy.name
    STRATEGY_REQUESTS.labels(name).inc()
    try:
        result = await resolved.strategy.run(opened.sampler, resolved.options)
    finally:
        await opened.sampler.abort_outstanding()
    budget = resolved.options.sample_budget()
    STRATEGY_SAMPLES.labels(name).observe(len(result.samples))
    SAMPLES_SAVED.labels(name).inc(max(0, budget - len(result.samples)))
    for iterations in result.refine_iterations:
        REFINE_ITERATIONS.labels(name).observe(iterations)
    if result.route is not None:
        REFINE_ROUTES.labels(result.route).inc()
    if result.preallocation is not None:
        DSC_PREALLOCATION.observe(result.preallocation)
    terminated = sum(sample.stopped_by_watcher for sample in result.samples)
    if terminated:
        SAMPLES_TERMINATED.labels(name).inc(terminated)
    return StrategyOutcome(
        result=result,
        resolved=resolved,
        usage=opened.usage,
        certainty_method=opened.sampler.certainty_method,
        elapsed_ms=(time.perf_counter() - started) * 1000,
        kind=opened.kind,
        model=opened.model,
        response_id=f"{'chatcmpl' if opened.kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}",
        created=int(time.time()),
    )


async def _stream(
    opened: OpenedSampler, resolved: ResolvedStrategy, include_usage: bool,
    limits: StrategyLimits, request_id: str,
) -> AsyncGenerator[str, None]:
    """SSE comments while the strategy works (keep-alives, and the strategy's progress notes),
    then the answer as ordinary chunks.

    A client that goes away stops this generator; the `finally` cancels the strategy task,
    whose own `finally` aborts every outstanding sub-request. So does the deadline, and the
    client then gets the timeout as an error event.
    """
    task = asyncio.create_task(run_before(limits.deadline, _run(opened, resolved)))
    note: asyncio.Task[str] | None = None
    try:
        yield ": refinery: strategy running\n\n"
        while not task.done():
            if note is None and opened.progress is not None:
                note = asyncio.create_task(opened.progress.get())
            waiting = {task} if note is None else {task, note}
            await asyncio.wait(waiting, timeout=limits.keepalive_s,
                               return_when=asyncio.FIRST_COMPLETED)
            if note is not None and note.done():
                yield f": refinery: {note.result()}\n\n"
                note = None
            elif not task.done():
                yield ": keep-alive\n\n"
        if note is not None:
            note.cancel()
            note = None
        while opened.progress is not None and not opened.progress.empty():
            yield f": refinery: {opened.progress.get_nowait()}\n\n"
        try:
            outcome = task.result()
        except Exception as exc:
            # Headers are sent: what is left is the same error the JSON path would give, as
            # an event.
            error = classify(exc)
            log_if_server_error(error, exc, request_id)
            yield error.sse_event()
            yield "data: [DONE]\n\n"
            return
        for event in strategy_stream_events(outcome, include_usage):
            yield event
    finally:
        for pending in (task, note):
            if pending is not None and not pending.done():
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)


async def run_strategy_request(
    engine: SamplerFactory,
    request: ChatCompletionRequest | CompletionRequest,
    resolved: ResolvedStrategy,
    raw_request: Request,
    limits: StrategyLimits,
) -> Response:
    """Answer one strategy request; every 4xx is raised before a stream's 200 is sent."""
    check_strategy_compatible(request, resolved)
    resolved = with_json_answers(request, resolved)
    opened = await run_before(limits.deadline, _open(engine, request, resolved))
    _check_token_budget(request, resolved, opened.usage.prompt_tokens, limits)
    if request.stream:
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        request_id = getattr(raw_request.state, "request_id", "-")
        return StreamingResponse(
            _stream(opened, resolved, include_usage, limits, request_id),
            media_type="text/event-stream",
        )
    work = run_before(limits.deadline, _run(opened, resolved))
    outcome = await cancel_on_disconnect(raw_request, work)
    return JSONResponse(strategy_body(outcome))
