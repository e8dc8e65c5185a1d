"""Running a strategy request: refuse what a strategy cannot honour, open a sampler on the
engine (every check done before a 200 is sent), run the strategy, always abort what is left,
record metrics, and answer as JSON or as an SSE stream."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator
from typing import Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest

from server.api.cancellation import cancel_on_disconnect
from server.api.error_responses import classify, log_if_server_error
from server.api.responses import StrategyOutcome, strategy_body, strategy_stream_events
from server.api.strategy_selection import ResolvedStrategy
from server.engine.vllm import OpenedSampler
from server.exceptions import InvalidRequest
from server.metrics import (
    DSC_PREALLOCATION,
    REFINE_ITERATIONS,
    REFINE_ROUTES,
    SAMPLES_SAVED,
    SAMPLES_TERMINATED,
    STRATEGY_REQUESTS,
    STRATEGY_SAMPLES,
)
from strategies.base import CertaintyMethod

__all__ = ["SamplerFactory", "run_strategy_request"]

# Below this a temperature is greedy sampling in vLLM: every sample would be the same.
_GREEDY_TEMPERATURE = 1e-5


class SamplerFactory(Protocol):
    """What the strategy path needs of an engine (`VllmEngine`, or a test's stub)."""

    async def open_sampler(
        self, request: ChatCompletionRequest | CompletionRequest, request_id: str, slots: int,
        certainty_source: CertaintyMethod | None = None,
    ) -> OpenedSampler: ...


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


async def _open(
    engine: SamplerFactory,
    request: ChatCompletionRequest | CompletionRequest,
    resolved: ResolvedStrategy,
) -> OpenedSampler:
    options = resolved.options
    opened = await engine.open_sampler(request, f"strategy-{uuid.uuid4().hex}",
                                       options.sample_budget(), options.certainty_source())
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
    opened: OpenedSampler, resolved: ResolvedStrategy, include_usage: bool, keepalive_s: float,
    request_id: str,
) -> AsyncGenerator[str, None]:
    """SSE comments while the strategy works (keep-alives, and the strategy's progress notes),
    then the answer as ordinary chunks.

    A client that goes away stops this generator; the `finally` cancels the strategy task,
    whose own `finally` aborts every outstanding sub-request.
    """
    task = asyncio.create_task(_run(opened, resolved))
    note: asyncio.Task[str] | None = None
    try:
        yield ": refinery: strategy running\n\n"
        while not task.done():
            if note is None and opened.progress is not None:
                note = asyncio.create_task(opened.progress.get())
            waiting = {task} if note is None else {task, note}
            await asyncio.wait(waiting, timeout=keepalive_s, return_when=asyncio.FIRST_COMPLETED)
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
    keepalive_s: float,
) -> Response:
    """Answer one strategy request; every 4xx is raised before a stream's 200 is sent."""
    _check_compatible(request)
    opened = await _open(engine, request, resolved)
    if request.stream:
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        request_id = getattr(raw_request.state, "request_id", "-")
        return StreamingResponse(
            _stream(opened, resolved, include_usage, keepalive_s, request_id),
            media_type="text/event-stream",
        )
    outcome = await cancel_on_disconnect(raw_request, _run(opened, resolved))
    return JSONResponse(strategy_body(outcome))
