"""Hooks in the front-end process: strip the statistics from the logprobs, hand them to outputs.

The engine returns the per-token statistics as two tagged columns of every sampled-token
logprobs row (see `reductions`). `LogprobsProcessor._update_sample_logprobs` is wrapped to cut
those columns off before vLLM turns the row into `Logprob` entries, so every response, with or
without certainty, is exactly what vLLM would have produced. The values are kept on the
request's `LogprobsProcessor` when its sampling params ask for them (`extra_args`
`{"refinery_certainty": 1}`, also reachable as `vllm_xargs` in an OpenAI request), and
`RequestState._new_completion_output` attaches that list to every `CompletionOutput`.

A request that reads no logprob entries (Refinery's own strategy sub-requests, which ask for
`logprobs=0` only to carry the statistics) also sets `{"refinery_logprob_text": 0}`: vLLM would
otherwise decode every sampled token a second time, non-incrementally, for the text of its
logprob entry -- measured as the largest part of the front end's per-token work for a strategy
(docs/benchmarks.md, "Self-consistency N=8"). The entries are still built, with no text.

The list is shared, not copied per output: vLLM merges queued DELTA outputs of one request
into the first one (`RequestOutput.add`), which would drop a per-delta attribute, while a
shared list always holds the values of every token delivered so far.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from server.engine.certainty.reductions import STATISTICS_TAG

__all__ = [
    "CERTAINTY_EXTRA_ARG",
    "LOGPROB_TEXT_EXTRA_ARG",
    "TokenStatistics",
    "install_frontend_hooks",
    "statistics_of",
]

# The `SamplingParams.extra_args` key a request sets to receive the statistics.
CERTAINTY_EXTRA_ARG = "refinery_certainty"
_ATTRIBUTE = "refinery_token_statistics"
# The `SamplingParams.extra_args` key that, set to 0, leaves logprob entries without text.
LOGPROB_TEXT_EXTRA_ARG = "refinery_logprob_text"
_NO_TEXT = "refinery_no_logprob_text"


@dataclass
class TokenStatistics:
    """Per generated token of one request: self-certainty term and entropy (nats)."""

    certainty: list[float] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.certainty)


def statistics_of(completion: Any) -> TokenStatistics | None:
    """The statistics attached to a vLLM `CompletionOutput`, if its request asked for them."""
    return getattr(completion, _ATTRIBUTE, None)


def _asks(sampling_params: Any) -> bool:
    extra = getattr(sampling_params, "extra_args", None) or {}
    return bool(extra.get(CERTAINTY_EXTRA_ARG))


def _skips_text(sampling_params: Any) -> bool:
    extra = getattr(sampling_params, "extra_args", None) or {}
    return extra.get(LOGPROB_TEXT_EXTRA_ARG, 1) == 0


def _split(logprobs_lists: Any) -> tuple[Any, Any | None]:
    """(logprobs without the tagged columns, the [tokens, 2] statistics or None)."""
    ids = logprobs_lists.logprob_token_ids
    if ids.ndim != 2 or ids.shape[1] < 3 or ids[0, -1] != STATISTICS_TAG:
        return logprobs_lists, None
    values = logprobs_lists.logprobs
    stripped = logprobs_lists._replace(logprob_token_ids=ids[:, :-2], logprobs=values[:, :-2])
    return stripped, values[:, -2:]


def _wrap_from_new_request(create: Callable[..., Any]) -> classmethod:
    @functools.wraps(create)
    def from_new_request(cls, tokenizer, request):
        processor = create(cls, tokenizer, request)
        if _asks(request.sampling_params):
            setattr(processor, _ATTRIBUTE, TokenStatistics())
        if _skips_text(request.sampling_params):
            setattr(processor, _NO_TEXT, True)
        return processor

    from_new_request.__refinery_hook__ = True
    return classmethod(from_new_request)


def _wrap_update(update: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(update)
    def update_sample_logprobs(self, logprobs_lists):
        logprobs_lists, statistics = _split(logprobs_lists)
        sink: TokenStatistics | None = getattr(self, _ATTRIBUTE, None)
        if statistics is not None and sink is not None:
            sink.certainty.extend(statistics[:, 0].tolist())
            sink.entropy.extend(statistics[:, 1].tolist())
        if not getattr(self, _NO_TEXT, False):
            return update(self, logprobs_lists)
        # vLLM decodes the entries' text only when the processor has a tokenizer.
        tokenizer, self.tokenizer = self.tokenizer, None
        try:
            return update(self, logprobs_lists)
        finally:
            self.tokenizer = tokenizer

    update_sample_logprobs.__refinery_hook__ = True
    return update_sample_logprobs


def _wrap_new_output(new_output: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(new_output)
    def new_completion_output(self, token_ids, finish_reason, stop_reason):
        completion = new_output(self, token_ids, finish_reason, stop_reason)
        statistics = getattr(self.logprobs_processor, _ATTRIBUTE, None)
        if statistics is not None:
            setattr(completion, _ATTRIBUTE, statistics)
        return completion

    new_completion_output.__refinery_hook__ = True
    return new_completion_output


def _hooked(function: object) -> bool:
    return getattr(function, "__refinery_hook__", False)


def install_frontend_hooks() -> None:
    """Wrap the front end's logprobs processor and output builder (once per process)."""
    from vllm.v1.engine.logprobs import LogprobsProcessor
    from vllm.v1.engine.output_processor import RequestState

    if not _hooked(LogprobsProcessor.from_new_request):
        LogprobsProcessor.from_new_request = _wrap_from_new_request(
            LogprobsProcessor.from_new_request.__func__)
    if not _hooked(LogprobsProcessor._update_sample_logprobs):
        LogprobsProcessor._update_sample_logprobs = _wrap_update(
            LogprobsProcessor._update_sample_logprobs)
    if not _hooked(RequestState._new_completion_output):
        RequestState._new_completion_output = _wrap_new_output(
            RequestState._new_completion_output)
