"""Rendering OpenAI shapes: what vLLM's serving layer returns for plain requests, and the
chosen answer of a strategy request (as vLLM's own response models, plus `strategy`)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal

from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from vllm.entrypoints.generate.base.protocol import DeltaMessage
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
    ChatMessage,
)
from vllm.entrypoints.openai.completion.protocol import (
    CompletionResponse,
    CompletionResponseChoice,
    CompletionResponseStreamChoice,
    CompletionStreamResponse,
)
from vllm.entrypoints.serve.engine.protocol import ErrorResponse, UsageInfo

from server.api.error_responses import ClassifiedError, classify, from_vllm_error
from server.api.strategy_selection import ResolvedStrategy
from server.api.tool_call_messages import tool_message
from server.engine.vllm_sampler import SamplerUsage
from strategies import Result
from strategies.base import CertaintyMethod

__all__ = [
    "StrategyOutcome",
    "render_serving_result",
    "strategy_body",
    "strategy_info",
    "strategy_stream_events",
]


def render_serving_result(result: ErrorResponse | AsyncGenerator[str, None] | Any) -> Response:
    """An ErrorResponse, a finished response model, or an SSE generator → the HTTP response.

    The JSON body is `model_dump()`, exactly as `vllm serve` renders it, so shapes match.
    """
    if isinstance(result, ErrorResponse):
        return _from_vllm(result).response()
    if isinstance(result, AsyncGenerator):
        return StreamingResponse(_openai_error_events(result), media_type="text/event-stream")
    return JSONResponse(content=result.model_dump())


def _from_vllm(error: ErrorResponse) -> ClassifiedError:
    """A vLLM `ErrorResponse` classified as if its exception had been raised to us: vLLM
    renders a dead engine core as a 500 whose message is EngineDeadError's, which is a 503
    here (`classify`), as every other path answers it."""
    from vllm.entrypoints.serve.exception_handling.utils import sanitize_message
    from vllm.v1.engine.exceptions import EngineDeadError

    dead = EngineDeadError()
    if error.error.code >= 500 and error.error.message == sanitize_message(str(dead)):
        return classify(dead)
    return from_vllm_error(error)


_VLLM_ERROR_EVENT = 'data: {"error"'


async def _openai_error_events(stream: AsyncGenerator[str, None]) -> AsyncGenerator[str, None]:
    """vLLM's SSE stream as it is, except its error events (a failure after the 200, e.g.
    the engine dying mid-stream), which are re-classified into OpenAI's vocabulary. Closing
    or cancelling this closes vLLM's generator, which aborts the engine request."""
    async with aclosing(stream):
        async for event in stream:
            if event.startswith(_VLLM_ERROR_EVENT):
                try:
                    error = ErrorResponse.model_validate_json(
                        event.removeprefix("data: ").strip())
                except ValueError:
                    pass
                else:
                    event = _from_vllm(error).sse_event()
            yield event


@dataclass(frozen=True)
class StrategyOutcome:
    """A finished strategy request, with what is needed to render it."""

    result: Result
    resolved: ResolvedStrategy
    usage: SamplerUsage
    certainty_method: CertaintyMethod | None  # None: the strategy asked for no certainty
    elapsed_ms: float
    kind: Literal["chat", "completion"]
    model: str
    response_id: str
    created: int


def strategy_info(outcome: StrategyOutcome) -> dict[str, Any]:
    """The `strategy` object of a response (README.md, "Strategies")."""
    result, options = outcome.result, outcome.resolved.options
    info: dict[str, Any] = {
        "name": outcome.resolved.strategy.name,
        "preset": outcome.resolved.preset,
        **result.details,
        "samples": len(result.samples),
        "max_samples": options.sample_budget(),
        "stopped_early": result.stopped_early,
        "answer": result.answer,
        "votes": result.votes,
        "certainty_method": outcome.certainty_method,
        "usage": {
            "prompt_tokens": outcome.usage.prompt_tokens,
            "completion_tokens": outcome.usage.completion_tokens,
            "sub_requests": outcome.usage.sub_requests,
            "aborted": outcome.usage.aborted,
        },
        "elapsed_ms": round(outcome.elapsed_ms, 1),
    }
    if options.return_candidates:
        info["candidates"] = [
            {
                "index": sample.index,
                "text": sample.text,
                "answer": answer,
                "certainty": sample.certainty,
                "entropy": sample.entropy,
                "lowest_group_certainty": sample.lowest_group_certainty,
                "mean_logprob": sample.mean_logprob,
                "tokens": sample.num_tokens,
                "finish_reason": sample.finish_reason,
                "terminated": sample.stopped_by_watcher,
                "chosen": sample.index == result.chosen.index,
            }
            for sample, answer in zip(result.samples, result.answers, strict=True)
        ]
    return info


def _usage(outcome: StrategyOutcome) -> UsageInfo:
    prompt, completion = outcome.usage.prompt_tokens, outcome.usage.completion_tokens
    return UsageInfo(prompt_tokens=prompt, completion_tokens=completion,
                     total_tokens=prompt + completion)


def strategy_body(outcome: StrategyOutcome) -> dict[str, Any]:
    """A normal chat.completion / text_completion for the chosen sample, plus `strategy`."""
    chosen = outcome.result.chosen
    common = {"id": outcome.response_id, "created": outcome.created, "model": outcome.model,
              "usage": _usage(outcome)}
    response: ChatCompletionResponse | CompletionResponse
    if outcome.kind == "chat":
        tools = tool_message(chosen)  # with tools offered: vLLM's message with the calls
        response = ChatCompletionResponse(
            choices=[ChatCompletionResponseChoice(
                index=0, message=tools.message if tools else ChatMessage(role="assistant",
                                                                         content=chosen.text),
                finish_reason=tools.finish_reason if tools else chosen.finish_reason,
                stop_reason=chosen.stop_reason,
            )],
            **common,
        )
    else:
        response = CompletionResponse(
            choices=[CompletionResponseChoice(
                index=0, text=chosen.text, finish_reason=chosen.finish_reason,
                stop_reason=chosen.stop_reason,
            )],
            **common,
        )
    return {**response.model_dump(), "strategy": strategy_info(outcome)}


# Words with their leading whitespace: the chosen text, already generated, is sent in pieces.
_PIECES = re.compile(r"\s*\S+|\s+")


def _chunk(outcome: StrategyOutcome, text: str | None, *, role: bool = False,
           finish: bool = False, delta: DeltaMessage | None = None) -> BaseModel:
    chosen = outcome.result.chosen
    common = {"id": outcome.response_id, "created": outcome.created, "model": outcome.model}
    finish_reason = chosen.finish_reason if finish else None
    stop_reason = chosen.stop_reason if finish else None
    if outcome.kind == "chat":
        if delta is None:
            delta = (DeltaMessage(role="assistant", content="") if role
                     else DeltaMessage(content=text))
        return ChatCompletionStreamResponse(
            object="chat.completion.chunk",
            choices=[ChatCompletionResponseStreamChoice(
                index=0, delta=delta, finish_reason=finish_reason, stop_reason=stop_reason)],
            **common,
        )
    return CompletionStreamResponse(
        object="text_completion",
        choices=[CompletionResponseStreamChoice(
            index=0, text=text or "", finish_reason=finish_reason, stop_reason=stop_reason)],
        **common,
    )


def strategy_stream_events(outcome: StrategyOutcome, include_usage: bool) -> Iterator[str]:
    """SSE events for the chosen answer: pieces, a final chunk carrying `strategy`, usage."""

    def event(chunk: BaseModel, **extra: Any) -> str:
        data = chunk.model_dump(exclude_unset=True) | extra
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    chosen = outcome.result.chosen
    tools = tool_message(chosen) if outcome.kind == "chat" else None
    if outcome.kind == "chat":
        yield event(_chunk(outcome, None, role=True))
    for piece in _PIECES.findall(chosen.text if tools is None else tools.message.content or ""):
        yield event(_chunk(outcome, piece))
    for delta in tools.deltas() if tools is not None else ():
        yield event(_chunk(outcome, None, delta=delta))
    final = _chunk(outcome, "" if outcome.kind == "completion" else None, finish=True)
    if tools is not None:
        final.choices[0].finish_reason = tools.finish_reason  # type: ignore[attr-defined]
    yield event(final, strategy=strategy_info(outcome))
    if include_usage:
        usage_chunk = _chunk(outcome, None)
        usage_chunk.choices = []
        usage_chunk.usage = _usage(outcome)
        yield event(usage_chunk)
    yield "data: [DONE]\n\n"
