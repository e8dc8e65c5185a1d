"""The Sampler strategies draw from: one abortable engine sub-request per sample.

Samples of one strategy request are submitted to the same `AsyncLLM` with the same prompt
tokens, so prefix caching computes the prompt once and every further sample reuses its KV
blocks (DESIGN.md §4: 8 separate requests submitted together share full blocks like one n=8
request). Each sample is its own engine request, so it can be aborted alone: cancelling the
task that iterates `AsyncLLM.generate()` aborts it in the engine.

Self-certainty is exact when Refinery's vLLM plugin is active in this process
(`server.engine.certainty`, on by default): the engine computes it from the full logits of every
step, and the sub-requests only ask for the sampled token's logprob (`logprobs=0`, free).
Otherwise it is the top-k estimate (DeepConf-style token confidence: minus the mean of the
top-20 log-probabilities), computed here from the logprobs vLLM returns with each token.
`certainty_method` says which.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from server.engine import certainty
from server.engine.certainty.summary import summarise
from server.metrics import SUBREQUEST_TOKENS, SUBREQUESTS_RUNNING
from strategies.base import Sample

if TYPE_CHECKING:
    from vllm.sampling_params import SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

__all__ = ["TOPK_CERTAINTY", "SamplerUsage", "VllmSampler", "topk_confidences"]

# vLLM's cap on returned logprobs (max_logprobs) and DeepConf's k.
TOPK_CERTAINTY = 20


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
    """Tokens a strategy request spent. The prompt is counted once: its prefill is shared."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    sub_requests: int = 0
    aborted: int = 0


class VllmSampler:
    """Samples one rendered prompt with one request's sampling parameters."""

    def __init__(
        self,
        engine: AsyncLLM,
        prompt: Any,
        params: SamplingParams,
        request_id: str,
        prompt_tokens: int,
    ) -> None:
        from vllm.sampling_params import RequestOutputKind

        self._engine = engine
        self._prompt = prompt
        self._request_id = request_id
        self._base_seed = params.seed
        self._exact = certainty.active()
        self.certainty_method = "exact" if self._exact else "topk"
        template = params.clone()
        template.n = 1
        template.flat_logprobs = True
        if self._exact:
            template.logprobs = 0
            template.extra_args = {**(template.extra_args or {}),
                                   certainty.CERTAINTY_EXTRA_ARG: 1}
        else:
            template.logprobs = TOPK_CERTAINTY
        # Deltas: tokens are counted as they come, so an aborted sample's tokens are counted too.
        template.output_kind = RequestOutputKind.DELTA
        self._template = template
        self._next_index = 0
        self._tasks: list[asyncio.Task[Sample]] = []
        self.usage = SamplerUsage(prompt_tokens=prompt_tokens)

    def submit(self, count: int, *, priority: int = 0) -> list[Awaitable[Sample]]:
        tasks = []
        for _ in range(count):
            index = self._next_index
            self._next_index += 1
            params = self._template.clone()
            if self._base_seed is not None:
                params.seed = self._base_seed + index  # as vLLM seeds the children of n > 1
            tasks.append(asyncio.create_task(self._draw(index, params, priority)))
        self._tasks.extend(tasks)
        self.usage.sub_requests += count
        return tasks

    async def _draw(self, index: int, params: SamplingParams, priority: int) -> Sample:
        text_parts: list[str] = []
        token_ids: list[int] = []
        topk: list[float] = []
        exact: certainty.TokenStatistics | None = None
        finish_reason = stop_reason = cumulative = None
        SUBREQUESTS_RUNNING.inc()
        try:
            async for output in self._engine.generate(
                self._prompt, params, f"{self._request_id}-{index}", priority=priority
            ):
                delta = output.outputs[0]
                text_parts.append(delta.text)
                token_ids.extend(delta.token_ids)
                self.usage.completion_tokens += len(delta.token_ids)
                if self._exact:
                    # The same shared list on every output of the sample (frontend_hooks).
                    exact = certainty.statistics_of(delta)
                else:
                    topk.extend(topk_confidences(delta.logprobs))
                cumulative = delta.cumulative_logprob
                finish_reason, stop_reason = delta.finish_reason, delta.stop_reason
        except asyncio.CancelledError:
            self.usage.aborted += 1
            SUBREQUEST_TOKENS.labels("aborted").inc(len(token_ids))
            raise
        finally:
            SUBREQUESTS_RUNNING.dec()
        SUBREQUEST_TOKENS.labels("completion").inc(len(token_ids))
        if self._exact:
            if token_ids and (exact is None or len(exact) != len(token_ids)):
                raise RuntimeError(
                    "the certainty plugin is active in the API process but the engine returned "
                    f"values for {0 if exact is None else len(exact)} of {len(token_ids)} "
                    "tokens: its worker processes did not load it")
            per_token = exact.certainty if exact is not None else []
            summary = summarise(per_token, exact.entropy if exact is not None else None)
        else:
            per_token = topk
            summary = summarise(topk)
        return Sample(
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
        )

    async def abort_outstanding(self) -> None:
        outstanding = [task for task in self._tasks if not task.done()]
        for task in outstanding:
            task.cancel()
        await asyncio.gather(*outstanding, return_exceptions=True)
