"""The load client's statistics and SSE handling, against an in-process fake streaming server.

The fake is an `httpx.MockTransport` whose responses are async generators: chunks reach the
client one by one with real delays between them. (httpx's ASGITransport would buffer the whole
body first, making every TTFT equal to the total latency.)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from clients.loadgen import LoadError, LoadResult, RequestRecord, percentile, run_streaming_load

# Seconds before the first text chunk, per prompt; tokens then follow every TOKEN_GAP_S.
FIRST_TEXT_DELAY_S = {"fast": 0.01, "slow": 0.25}
TOKEN_GAP_S = 0.02


def _data(obj: Any) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


class FakeCompletionServer:
    """Streams like vLLM's /v1/completions: keep-alive comment, empty chunk, text, usage."""

    def __init__(self, *, mode: str = "ok") -> None:
        self.mode = mode
        self.bodies: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def _stream(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            yield b": keep-alive\n\n"
            yield _data({"choices": [{"index": 0, "text": ""}]})  # carries no text: not TTFT
            await asyncio.sleep(FIRST_TEXT_DELAY_S[body["prompt"]])
            if self.mode == "error_chunk":
                yield _data({"error": {"message": "engine died", "code": 500}})
                return
            for i in range(body["max_tokens"]):
                if i:
                    await asyncio.sleep(TOKEN_GAP_S)
                yield _data({"choices": [{"index": 0, "text": f" t{i}"}], "usage": None})
            if self.mode != "no_usage":
                usage = {"prompt_tokens": 3, "completion_tokens": body["max_tokens"]}
                yield _data({"choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"
        finally:
            self.in_flight -= 1

    async def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/completions"
        if self.mode == "http_error":
            return httpx.Response(429, json={"error": {"message": "overloaded"}})
        body = json.loads(request.content)
        self.bodies.append(body)
        return httpx.Response(
            200, content=self._stream(body), headers={"content-type": "text/event-stream"}
        )


def _run(server: FakeCompletionServer, **overrides: Any) -> LoadResult:
    kwargs: dict[str, Any] = {
        "requests": 8,
        "concurrency": 4,
        "max_tokens": 5,
        "prompts": ["fast", "slow"],
        "progress": False,
        "transport": httpx.MockTransport(server.handle),
    }
    kwargs.update(overrides)
    return asyncio.run(run_streaming_load("http://fake", "smollm2", **kwargs))


def test_percentile_interpolates_linearly_between_ranks() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)
    assert percentile([float(v) for v in range(1, 101)], 95) == pytest.approx(95.05)
    assert percentile([7.0], 95) == 7.0
    assert percentile([1.0, 9.0], 0) == 1.0
    assert percentile([1.0, 9.0], 100) == 9.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_load_result_throughput_is_all_tokens_over_wall_time() -> None:
    records = tuple(
        RequestRecord(ttft_s=t, latency_s=t + 1.0, completion_tokens=64)
        for t in (0.010, 0.020, 0.030, 0.040, 0.100)
    )
    result = LoadResult(records=records, wall_s=4.0)
    assert result.completion_tokens == 320
    assert result.output_tokens_per_s == pytest.approx(80.0)
    assert result.ttft_p50_ms == pytest.approx(30.0)
    assert result.ttft_p95_ms == pytest.approx(88.0)  # 40 + 0.8 * (100 - 40)
    assert result.latency_p50_ms == pytest.approx(1030.0)


def test_load_times_first_text_not_comments_and_counts_usage_tokens() -> None:
    server = FakeCompletionServer()
    result = _run(server)

    assert len(result.records) == 8
    assert [r.completion_tokens for r in result.records] == [5] * 8
    assert result.completion_tokens == 40
    assert result.output_tokens_per_s == pytest.approx(40 / result.wall_s)
    # Records keep request order: even requests got "fast", odd ones "slow".
    fast, slow = result.records[0::2], result.records[1::2]
    for record in slow:
        assert 0.25 <= record.ttft_s < 1.0
    for record in fast:
        assert record.ttft_s < 0.2
    for record in result.records:
        assert record.latency_s >= record.ttft_s + 4 * TOKEN_GAP_S
    assert result.ttft_p95_ms >= 250
    assert result.ttft_p50_ms < result.ttft_p95_ms


def test_load_sends_streaming_greedy_ignore_eos_requests_within_concurrency() -> None:
    server = FakeCompletionServer()
    _run(server, requests=12, concurrency=3, max_tokens=4)

    assert server.max_in_flight == 3
    assert [b["prompt"] for b in server.bodies].count("slow") == 6
    for body in server.bodies:
        assert body["model"] == "smollm2"
        assert body["stream"] is True
        assert body["stream_options"] == {"include_usage": True}
        assert body["ignore_eos"] is True
        assert body["max_tokens"] == 4
        assert body["temperature"] == 0.0
        assert "seed" not in body


def test_seeded_load_gives_each_request_its_own_seed() -> None:
    server = FakeCompletionServer()
    _run(server, requests=4, concurrency=4, max_tokens=1, seed=100)
    assert sorted(b["seed"] for b in server.bodies) == [100, 101, 102, 103]
    assert {b["temperature"] for b in server.bodies} == {1.0}


@pytest.mark.parametrize(
    ("mode", "message"),
    [("http_error", "HTTP 429"), ("error_chunk", "engine died"), ("no_usage", "usage")],
)
def test_a_failed_request_voids_the_load(mode: str, message: str) -> None:
    with pytest.raises(LoadError, match=message):
        _run(FakeCompletionServer(mode=mode))
