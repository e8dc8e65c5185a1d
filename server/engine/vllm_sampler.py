"""The Sampler of the in-process vLLM engine: one abortable engine sub-request per sample.

Samples of one conversation are submitted to the same `AsyncLLM` with the same prompt tokens,
so prefix caching computes the prompt's full KV blocks once and every further sample reuses
them (docs/architecture.md, "Sharing the prompt"). A continued conversation (a strategy's extra
messages) starts with the request's own rendered prompt, so its shared prefix is reused too.
Each sample is its own engine request, so it can be aborted alone: closing or cancelling the
iteration of `AsyncLLM.generate()` aborts it in the engine.

Prompts are rendered by a function the API layer hands in (vLLM's own chat/completion
rendering of the request, continued by the extra messages), once per distinct conversation.

Self-certainty is exact when Refinery's vLLM plugin is active in this process
(`server.engine.certainty`, on by default): the engine computes it from the full logits of every
step, and the sub-requests only ask for the sampled token's logprob (`logprobs=0`).
Otherwise it is the top-k estimate (DeepConf-style token confidence: minus the mean of the
top-20 log-probabilities), computed here from the logprobs vLLM returns with each token.
`certainty_method` says which. A strategy that reads no certainty (`certainty_source` "none")
gets sub-requests without logprobs: the engine then skips the vocabulary-wide log-softmax, rank
count and statistics of every step (≈ 11% of the 135M model's throughput, docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from server.engine import certainty
from server.engine.certainty.summary import summarise
from server.exceptions import InvalidRequest
from server.metrics import SUBREQUEST_TOKENS, SUBREQUESTS_RUNNING
from strategies.base import (
    WATCHER_STOP,
    CertaintyMethod,
    CertaintySource,
    Message,
    Sample,
    TokenWatcher,
)

if TYPE_CHECKING:
    from vllm.sampling_params import SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

__all__ = [
    "TOPK_CERTAINTY",
    "PromptRenderer",
    "RenderedPrompt",
    "SamplerUsage",
    "VllmSampler",
    "topk_confidences",
]

# vLLM's cap on returned logprobs (max_logprobs) and DeepConf's k.
TOPK_CERTAINTY = 20


@dataclass(frozen=True)
class RenderedPrompt:
    """A conversation rendered for the engine."""

    engine_input: Any  # what `AsyncLLM.generate` takes
    num_tokens: int
    # The most tokens a sample of it may generate: the context left after the prompt, capped
    # like vLLM caps a request's max_tokens (server override, platform limit).
    max_tokens_limit: int


# Renders the request's conversation followed by the given extra messages (none: as it came).
PromptRenderer = Callable[[tuple[Message, ...]], Awaitable[RenderedPrompt]]


def topk_confidences(logprobs: Any, k: int = TOPK_CERTAINTY) -> list[float]:
    """−mean(top-k logprobs) of every position of a FlatLogprobs (DeepConf token confidence).

    Entries of rank ≤ k are the top-k; the sampled token is also listed when it ranked lower.
    """
    if logprobs is None:
        return []
    confidences = []
    for start, end in zip(logprobs.start_indices, logprobs.end_indices, strict=True):
        top = [lp for lp, rank in zip(logprobs.logprobs[start:end], logprobs.ranks[start:end],
                                      strict=True) if rank is not None and rank <= k]
        if top:
            confidences.append(-sum(top) / len(top))
    return confidences


@dataclass
class SamplerUsage:
    """Tokens a strategy request spent. Each distinct prompt is counted once: samples of it
    share its prefill."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    sub_requests: int = 0
    aborted: int = 0
    prompts: int = 0  # distinct conversations rendered


@dataclass(frozen=True)
class _Call:
    """What one `submit` asked for, beyond the request's own parameters."""

    messages: tuple[Message, ...]
    max_tokens: int | None
    temperature: float | None
    json_schema: Mapping[str, Any] | None
    priority: int
    watch: TokenWatcher | None


class VllmSampler:
    """Samples one request's conversation (optionally continued) on an in-process `AsyncLLM`."""

    def __init__(
        self,
        engine: AsyncLLM,
        render: PromptRenderer,
        prompt: RenderedPrompt,
        params: SamplingParams,
        request_id: str,
        *,
        family: str = "",
        certainty_source: CertaintySource | None = None,
        read_tool_calls: Callable[[Sample], Sample] | None = None,
    ) -> None:
        """`prompt` is the request's own conversation, already rendered (and checked); `params`
        are the request's sampling parameters for it. `certainty_source` (StrategyOptions):
        "topk" asks for the top-20 estimate even where the exact plugin runs, "none" for no
        certainty and no logprobs. `read_tool_calls` fills each finished sample's tool calls
        (server.engine.tool_call_parsing) when the request offers tools."""
        from vllm.sampling_params import RequestOutputKind

        self._engine = engine
        self._render = render
        self._request_id = request_id
        self._base_seed = params.seed
        self._wanted = certainty_source != "none"
        self._exact = self._wanted and certainty.active() and certainty_source != "topk"
        self.certainty_method: CertaintyMethod | None = (
            None if not self._wanted else "exact" if self._exact else "topk")
        self.family = family
        self._read_tool_calls = read_tool_calls
        template = params.clone()
        template.n = 1
        template.flat_logprobs = True
        if self._exact:
            template.logprobs = 0
            # The statistics ride on the sampled token's logprob; its text is never read.
            template.extra_args = {**(template.extra_args or {}),
                                   certainty.CERTAINTY_EXTRA_ARG: 1,
                                   certainty.LOGPROB_TEXT_EXTRA_ARG: 0}
        elif self._wanted:
            template.logprobs = TOPK_CERTAINTY
        else:
            template.logprobs = None  # whatever the request asked: nothing reads them
        # Deltas: tokens are counted as they come, so an aborted sample's tokens are counted too.
        template.output_kind = RequestOutputKind.DELTA
        self._template = template
        self._next_index = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self._prompts: dict[tuple[Message, ...], asyncio.Future[RenderedPrompt]] = {}
        self.usage = SamplerUsage()
        # Progress notes of the strategy, for a streamed response to send as SSE comments.
        self.progress: asyncio.Queue[str] = asyncio.Queue()
        self._count_prompt(prompt)
        rendered: asyncio.Future[RenderedPrompt] = asyncio.get_running_loop().create_future()
        rendered.set_result(prompt)
        self._prompts[()] = rendered

    def _count_prompt(self, prompt: RenderedPrompt) -> None:
        self.usage.prompt_tokens += prompt.num_tokens
        self.usage.prompts += 1
        SUBREQUEST_TOKENS.labels("prompt").inc(prompt.num_tokens)

    async def _rendered(self, messages: tuple[Message, ...]) -> RenderedPrompt:
        """The conversation's rendering, done once however many samples ask at the same time."""
        rendering = self._prompts.get(messages)
        if rendering is None:
            task = asyncio.create_task(self._render(messages))
            task.add_done_callback(
                lambda t: self._count_prompt(t.result())
                if not t.cancelled() and t.exception() is None else None)
            self._prompts[messages] = rendering = task
            self._tasks.append(task)
        # Shielded: one sample cancelled while waiting must not cancel the others' rendering.
        return await asyncio.shield(rendering)

    def submit(
        self,
        count: int,
        *,
        messages: Sequence[Message] = (),
        max_tokens: int | None = None,
        temperature: float | None = None,
        json_schema: Mapping[str, Any] | None = None,
        priority: int = 0,
        watch: TokenWatcher | None = None,
    ) -> list[Awaitable[Sample]]:
        call = _Call(tuple(messages), max_tokens, temperature, json_schema, priority, watch)
        tasks = []
        for _ in range(count):
            index = self._next_index
            self._next_index += 1
            tasks.append(asyncio.create_task(self._draw(index, call)))
        self._tasks.extend(tasks)
        self.usage.sub_requests += count
        return tasks

    def _params(self, index: int, call: _Call, prompt: RenderedPrompt) -> SamplingParams:
        params = self._template.clone()
        if self._base_seed is not None:
            params.seed = self._base_seed + index  # as vLLM seeds the children of n > 1
        if call.temperature is not None:
            params.temperature = call.temperature
        wanted = call.max_tokens if call.max_tokens is not None else params.max_tokens
        params.max_tokens = min(wanted or prompt.max_tokens_limit, prompt.max_tokens_limit)
        if params.max_tokens < 1:
            raise InvalidRequest(
                f"the conversation a strategy continued fills the model's context "
                f"({prompt.num_tokens} prompt tokens): raise --max-model-len or shorten the "
                "request", param="messages", code="context_length_exceeded")
        if call.json_schema is not None:
            from vllm.sampling_params import StructuredOutputsParams

            params.structured_outputs = StructuredOutputsParams(json=dict(call.json_schema))
        return params

    def _so_far(self, exact: certainty.TokenStatistics | None, topk: list[float],
                tokens: int) -> Sequence[float]:
        """The sample's per-token certainties for the tokens received so far. The plugin's
        shared list can run ahead of the deltas consumed here: cut it (copy only then)."""
        if not self._exact:
            return topk
        values = exact.certainty if exact is not None else []
        return values if len(values) == tokens else values[:tokens]

    async def _draw(self, index: int, call: _Call) -> Sample:
        prompt = await self._rendered(call.messages)
        params = self._params(index, call, prompt)
        text_parts: list[str] = []
        token_ids: list[int] = []
        topk: list[float] = []
        exact: certainty.TokenStatistics | None = None
        finish_reason = stop_reason = cumulative = None
        stopped = False
        SUBREQUESTS_RUNNING.inc()
        try:
            stream = self._engine.generate(prompt.engine_input, params,
                                           f"{self._request_id}-{index}", priority=call.priority)
            # Closing the stream early (a watcher's stop) aborts the request in the engine.
            async with contextlib.aclosing(stream):
                async for output in stream:
                    delta = output.outputs[0]
                    text_parts.append(delta.text)
                    token_ids.extend(delta.token_ids)
                    self.usage.completion_tokens += len(delta.token_ids)
                    if self._exact:
                        # The same shared list on every output of the sample (frontend_hooks).
                        exact = certainty.statistics_of(delta)
                    elif self._wanted:
                        topk.extend(topk_confidences(delta.logprobs))
                    cumulative = delta.cumulative_logprob
                    finish_reason, stop_reason = delta.finish_reason, delta.stop_reason
                    watching = call.watch is not None and finish_reason is None
                    if watching and call.watch(self._so_far(exact, topk, len(token_ids))):
                        stopped, finish_reason = True, WATCHER_STOP
                        break
        except asyncio.CancelledError:
            self.usage.aborted += 1
            SUBREQUEST_TOKENS.labels("aborted").inc(len(token_ids))
            raise
        finally:
            SUBREQUESTS_RUNNING.dec()
        if stopped:
            self.usage.aborted += 1
        SUBREQUEST_TOKENS.labels("aborted" if stopped else "completion").inc(len(token_ids))
        if self._exact:
            if token_ids and (exact is None or len(exact) < len(token_ids)):
                raise RuntimeError(
                    "the certainty plugin is active in the API process but the engine returned "
                    f"values for {0 if exact is None else len(exact)} of {len(token_ids)} "
                    "tokens: its worker processes did not load it")
            per_token = list(self._so_far(exact, topk, len(token_ids)))
            entropy = exact.entropy[:len(token_ids)] if exact is not None else None
            summary = summarise(per_token, entropy)
        else:
            per_token = topk
            summary = summarise(topk)  # None without certainty (no values)
        sample = Sample(
            index=index,
            text="".join(text_parts),
            token_ids=tuple(token_ids),
            finish_reason=finish_reason,
            cumulative_logprob=cumulative,
            certainty=summary.certainty if summary else None,
            entropy=summary.entropy if summary else None,
            lowest_group_certainty=summary.lowest_group_certainty if summary else None,
            token_certainty=tuple(per_token),
            stop_reason=stop_reason,
            stopped_by_watcher=stopped,
        )
        return self._read_tool_calls(sample) if self._read_tool_calls is not None else sample

    def report_progress(self, text: str) -> None:
        self.progress.put_nowait(" ".join(text.split()))  # one line, whatever it was given

    async def abort_outstanding(self) -> None:
        """Cancel every unfinished sample (and prompt rendering) and wait until each is gone."""
        outstanding = [task for task in self._tasks if not task.done()]
        for task in outstanding:
            task.cancel()
        await asyncio.gather(*outstanding, return_exceptions=True)
