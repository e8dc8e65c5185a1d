"""A small streaming load client for OpenAI-compatible servers (Refinery, `vllm serve`).

Sends `requests` streaming `/v1/completions` requests, at most `concurrency` at a time, and
times each one from the client's side: time to the first chunk that carries text (TTFT), total
latency, and the completion tokens the server reports in its usage chunk. Requests set
`ignore_eos` so that every one produces exactly `max_tokens` tokens: two servers compared with
the same workload then do the same work, whatever the model would have said.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from tqdm import tqdm

__all__ = ["LoadError", "LoadResult", "RequestRecord", "percentile", "run_streaming_load"]


class LoadError(RuntimeError):
    """A request failed (HTTP error, error chunk, or a stream without usage): the load is void."""


@dataclass(frozen=True)
class RequestRecord:
    """One request as the client saw it; times in seconds from when the request was sent."""

    ttft_s: float
    latency_s: float
    completion_tokens: int


@dataclass(frozen=True)
class LoadResult:
    """All requests of one load run and the wall time from the first send to the last answer."""

    records: tuple[RequestRecord, ...]
    wall_s: float

    @property
    def completion_tokens(self) -> int:
        return sum(r.completion_tokens for r in self.records)

    @property
    def output_tokens_per_s(self) -> float:
        """Output-token throughput of the whole load (not a mean of per-request rates)."""
        return self.completion_tokens / self.wall_s

    @property
    def ttft_p50_ms(self) -> float:
        return 1000 * percentile([r.ttft_s for r in self.records], 50)

    @property
    def ttft_p95_ms(self) -> float:
        return 1000 * percentile([r.ttft_s for r in self.records], 95)

    @property
    def latency_p50_ms(self) -> float:
        return 1000 * percentile([r.latency_s for r in self.records], 50)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile, interpolated linearly between ranks (numpy's default method)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _sse_data(line: str) -> str | None:
    """The payload of an SSE `data:` line; None for comments (`:` keep-alives), blanks, events."""
    if not line.startswith("data:"):
        return None
    payload = line[len("data:") :]
    return payload[1:] if payload.startswith(" ") else payload


async def _one_request(
    client: httpx.AsyncClient, body: Mapping[str, Any], headers: Mapping[str, str]
) -> RequestRecord:
    sent = time.perf_counter()
    first_text: float | None = None
    tokens: int | None = None
    async with client.stream("POST", "/v1/completions", json=body, headers=headers) as response:
        if response.status_code != 200:
            detail = (await response.aread()).decode(errors="replace")
            raise LoadError(f"HTTP {response.status_code}: {detail[:500]}")
        async for line in response.aiter_lines():
            payload = _sse_data(line)
            # Read on past [DONE] to the end of the body, so the connection is reused.
            if payload is None or payload.strip() == "[DONE]":
                continue
            chunk = json.loads(payload)
            if "error" in chunk:
                raise LoadError(f"error chunk: {chunk['error']}")
            if first_text is None and any(c.get("text") for c in chunk.get("choices") or ()):
                first_text = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    done = time.perf_counter()
    if first_text is None or tokens is None:
        raise LoadError("stream ended without text or without a usage chunk")
    return RequestRecord(ttft_s=first_text - sent, latency_s=done - sent, completion_tokens=tokens)


async def run_streaming_load(
    base_url: str,
    model: str,
    *,
    requests: int,
    concurrency: int,
    max_tokens: int,
    prompts: Sequence[str],
    api_key: str | None = None,
    progress: bool = True,
    seed: int | None = None,
    timeout_s: float = 600.0,
    transport: httpx.AsyncBaseTransport | None = None,
    extra_body: Mapping[str, Any] | None = None,
) -> LoadResult:
    """Send `requests` streaming completions (prompts cycled), `concurrency` in flight at most.

    Sampling is greedy (temperature 0) unless `seed` is given, then seeded at temperature 1.
    `transport` replaces the network (tests pass an in-process one); `extra_body` adds fields to
    every request (e.g. `logprobs`, `vllm_xargs`). Any failed request raises
    `LoadError` and cancels the rest: a load with failures measures nothing comparable.
    """
    if requests < 1 or concurrency < 1 or max_tokens < 1 or not prompts:
        raise ValueError("requests, concurrency and max_tokens must be >= 1; prompts non-empty")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    sampling: dict[str, Any] = {"temperature": 0.0} if seed is None else {"temperature": 1.0}
    semaphore = asyncio.Semaphore(concurrency)
    bar = tqdm(total=requests, unit="req", disable=not progress, leave=False)

    def body(index: int) -> dict[str, Any]:
        extra = {} if seed is None else {"seed": seed + index}
        return {
            "model": model,
            "prompt": prompts[index % len(prompts)],
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
            **sampling,
            **extra,
            **(extra_body or {}),
        }

    async def limited(client: httpx.AsyncClient, index: int) -> RequestRecord:
        async with semaphore:
            record = await _one_request(client, body(index), headers)
        bar.update()
        return record

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=timeout_s, limits=limits, transport=transport
    ) as client:
        start = time.perf_counter()
        tasks = [asyncio.ensure_future(limited(client, i)) for i in range(requests)]
        try:
            records = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            bar.close()
        wall = time.perf_counter() - start
    return LoadResult(records=tuple(records), wall_s=wall)
