"""The top-k certainty estimate from the logprobs an OpenAI-compatible backend returns.

DeepConf's token confidence (Fu et al. 2025): minus the mean of the top-k log-probabilities of
a position, k = 20 (vLLM's cap on returned logprobs). The in-process sampler computes the same
value from vLLM's FlatLogprobs (`server.engine.vllm_sampler.topk_confidences`, the entries of
rank ≤ k); here it comes from the JSON of a streamed response:

- chat: `logprobs.content[i].top_logprobs`, the first k entries of vLLM's per-position list.
  vLLM puts the sampled token first, so where it ranked below k the list is the sampled token
  plus the top k−1 and the estimate uses the sampled token's (lower) logprob in place of the
  k-th: slightly less confident than the in-process value at those positions;
- completion: `logprobs.top_logprobs[i]`, the sampled token plus the top k; with
  `return_tokens_as_token_ids` the keys are unique token ids, so the sampled token's entry is
  dropped where the map holds k + 1 entries: exactly the in-process value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["TOPK", "chat_confidences", "completion_confidences", "topk_confidence"]

TOPK = 20


def topk_confidence(logprobs: Sequence[float]) -> float | None:
    """−mean(logprobs) of one position's top-k log-probabilities; None for an empty list."""
    if not logprobs:
        return None
    return -sum(logprobs) / len(logprobs)


def chat_confidences(content: Sequence[Mapping[str, Any]], k: int = TOPK) -> list[float]:
    """One confidence per token of a chat chunk's `logprobs.content`."""
    values = []
    for entry in content:
        top = [float(item["logprob"]) for item in (entry.get("top_logprobs") or ())[:k]]
        confidence = topk_confidence(top)
        if confidence is not None:
            values.append(confidence)
    return values


def completion_confidences(tokens: Sequence[str], top_logprobs: Sequence[Mapping[str, float]
                                                                         | None],
                           k: int = TOPK) -> list[float]:
    """One confidence per token of a completion chunk (`logprobs.tokens`, `top_logprobs`)."""
    values = []
    for token, top in zip(tokens, top_logprobs, strict=True):
        if not top:
            continue
        entries = dict(top)
        if len(entries) > k:
            entries.pop(token, None)  # the sampled token ranked below k
        confidence = topk_confidence(list(entries.values())[:k])
        if confidence is not None:
            values.append(confidence)
    return values
