"""The gateway's remote sampler against a scripted backend (httpx.MockTransport): how samples
are grouped into backend requests, what each request carries, how failures reach the strategy,
and the top-20 certainty estimate. No network, no engine."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from server.backend.backend_client import BackendClient, BackendConfig
from server.backend.backend_errors import BackendTimeout, BackendUnavailable
from server.backend.remote_sampler import RemoteSampler, sub_request_base
from server.backend.topk_estimate import chat_confidences, completion_confidences
from server.engine.vllm_sampler import topk_confidences
from server.exceptions import ServingRefused
from strategies.base import WATCHER_STOP, Message
from strategies.best_of_n import BestOfNOptions, run_best_of_n

CHAT_BODY = {"model": "m", "messages": [{"role": "user", "content": "2+2?"}],
             "temperature": 0.7, "seed": 100, "max_tokens": 8,
             "strategy": {"name": "best_of_n", "n": 4}}
# Two tokens per sample; the top-20 logprobs of each position are 20 copies of these values.
TOKEN_LOGPROBS = (-0.5, -2.0)


def sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


def chat_chunk(index: int, token: int, logprob: float, finish: str | None,
               prompt_tokens: int = 11) -> dict[str, Any]:
    top = [{"token": f"token_id:{token + k}", "logprob": logprob} for k in range(20)]
    return {"choices": [{"index": index, "delta": {"content": f"t{token} "},
                         "token_ids": [token],
                         "logprobs": {"content": [{"token": f"token_id:{token}",
                                                   "logprob": logprob, "top_logprobs": top}]},
                         "finish_reason": finish, "stop_reason": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 1}}


@dataclass
class FakeBackend:
    """Answers every streamed request with `n` choices of two tokens each, interleaved; records
    what it was sent. `stall` keeps a stream open after its first chunk until it is closed."""

    status: int = 200
    error_body: dict[str, Any] | None = None
    stall: bool = False
    connect_failures: int = 0
    read_timeout: bool = False
    requests: list[httpx.Request] = field(default_factory=list)
    closed: int = 0
    attempts: int = 0

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(request.content) for request in self.requests]

    async def _stream(self, n: int) -> AsyncIterator[bytes]:
        try:
            for step, logprob in enumerate(TOKEN_LOGPROBS):
                for index in range(n):
                    finish = "stop" if step == len(TOKEN_LOGPROBS) - 1 else None
                    yield sse(chat_chunk(index, 10 * index + step, logprob, finish))
                if self.stall:
                    await asyncio.Event().wait()
            yield b"data: [DONE]\n\n"
        finally:
            self.closed += 1

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        if self.connect_failures:
            self.connect_failures -= 1
            raise httpx.ConnectError("connection refused", request=request)
        if self.read_timeout:
            raise httpx.ReadTimeout("silent", request=request)
        self.requests.append(request)
        if self.status >= 400:
            return httpx.Response(self.status, json=self.error_body)
        n = json.loads(request.content)["n"]
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=self._stream(n))


def sampler_for(backend: FakeBackend, body: dict[str, Any] = CHAT_BODY, *,
                kind: str = "chat", certainty_source: str | None = None,
                **config: Any) -> RemoteSampler:
    client = BackendClient(BackendConfig("http://backend:8000/v1", **config),
                           transport=httpx.MockTransport(backend))
    return RemoteSampler(client, kind, body, "strategy-abc",  # type: ignore[arg-type]
                         certainty_source=certainty_source)  # type: ignore[arg-type]


def run(test: Callable[[], Any]) -> Any:
    return asyncio.run(test())


def test_a_strategy_that_reads_no_certainty_asks_the_backend_for_no_logprobs() -> None:
    backend = FakeBackend()

    async def test() -> list[Any]:
        sampler = sampler_for(backend, {**CHAT_BODY, "logprobs": True, "top_logprobs": 3},
                              certainty_source="none")
        samples = await asyncio.gather(*sampler.submit(2))
        return [sampler, samples]

    sampler, samples = run(test)
    (sent,) = backend.bodies
    assert "logprobs" not in sent and "top_logprobs" not in sent  # not even the client's
    assert sent["return_token_ids"] is True and sent["n"] == 2
    assert sampler.certainty_method is None
    # (This backend streams logprobs anyway.) Tokens and text come from the token ids.
    assert all(s.num_tokens == 2 and s.text for s in samples)
    completion = sub_request_base({"prompt": "2+2?", "logprobs": 5}, "completion",
                                  logprobs=False)
    assert "logprobs" not in completion and completion["return_token_ids"] is True


def test_a_window_without_watcher_is_one_request_with_n() -> None:
    backend = FakeBackend()

    async def test() -> list[Any]:
        sampler = sampler_for(backend)
        first = await asyncio.gather(*sampler.submit(4))
        second = await asyncio.gather(*sampler.submit(2, priority=3))
        await sampler.abort_outstanding()
        return [first, second, sampler.usage]

    first, second, usage = run(test)
    assert len(backend.requests) == 2
    one, two = backend.bodies
    assert one["n"] == 4 and two["n"] == 2
    # Sample i gets seed + i: the second window starts at index 4.
    assert one["seed"] == 100 and two["seed"] == 104
    assert one["stream"] is True and one["logprobs"] is True and one["top_logprobs"] == 20
    assert one["return_token_ids"] is True and one["max_tokens"] == 8
    assert "strategy" not in one and "priority" not in one and two["priority"] == 3
    assert [s.index for s in first + second] == [0, 1, 2, 3, 4, 5]
    assert first[1].text == "t10 t11 " and first[1].token_ids == (10, 11)
    assert first[1].finish_reason == "stop"
    assert first[1].cumulative_logprob == pytest.approx(sum(TOKEN_LOGPROBS))
    assert first[1].token_certainty == pytest.approx([0.5, 2.0])
    assert first[1].certainty == pytest.approx(1.25)
    assert usage.sub_requests == 6 and usage.completion_tokens == 12
    assert usage.prompt_tokens == 11 and usage.prompts == 1  # one conversation, counted once


def test_every_request_of_a_strategy_request_carries_one_session_value() -> None:
    backend = FakeBackend()

    async def test() -> None:
        sampler = sampler_for(backend, session_header="x-affinity")
        await asyncio.gather(*sampler.submit(2))
        await asyncio.gather(*sampler.submit(3, watch=lambda values: False))

    run(test)
    # The watched samples are separate requests (each stoppable alone).
    assert [body["n"] for body in backend.bodies] == [2, 1, 1, 1]
    assert [body["seed"] for body in backend.bodies] == [100, 102, 103, 104]
    assert {r.headers["x-affinity"] for r in backend.requests} == {"strategy-abc"}


def test_a_watcher_stops_its_sample_and_closes_its_request() -> None:
    backend = FakeBackend(stall=True)

    async def test() -> Any:
        sampler = sampler_for(backend)
        (sample,) = await asyncio.gather(*sampler.submit(1, watch=lambda values: True))
        await sampler.abort_outstanding()
        return sample, sampler.usage

    sample, usage = run(test)
    assert sample.stopped_by_watcher and sample.finish_reason == WATCHER_STOP
    assert sample.token_ids == (0,)
    assert backend.closed == 1 and usage.aborted == 1


def test_continuations_schema_and_overrides_shape_the_request() -> None:
    backend = FakeBackend()
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}

    async def test() -> None:
        sampler = sampler_for(backend, send_priority=False)
        turns = (Message("assistant", "draft"), Message("user", "criticise it"))
        await asyncio.gather(*sampler.submit(1, messages=turns, json_schema=schema,
                                             temperature=0.1, max_tokens=3, priority=5))

    run(test)
    (body,) = backend.bodies
    assert body["messages"][1:] == [{"role": "assistant", "content": "draft"},
                                    {"role": "user", "content": "criticise it"}]
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "refinery_schema", "schema": schema}}
    assert body["temperature"] == 0.1
    assert body["max_completion_tokens"] == 3 and "max_tokens" not in body
    assert "priority" not in body  # REFINERY_BACKEND_PRIORITY=off


def test_a_completion_continues_its_prompt_as_text() -> None:
    backend = FakeBackend()
    body = {"model": "m", "prompt": "Q: 2+2?", "temperature": 0.7}

    async def test() -> None:
        sampler = sampler_for(backend, body, kind="completion")
        await asyncio.gather(*sampler.submit(1, messages=(Message("user", "Check it."),)),
                             return_exceptions=True)

    run(test)
    (sent,) = backend.bodies
    assert sent["prompt"] == "Q: 2+2?\n\nCheck it." and sent["logprobs"] == 20


def test_connect_errors_are_retried_and_then_a_503_with_retry_after() -> None:
    recovered = FakeBackend(connect_failures=2)

    async def ok() -> Any:
        return await asyncio.gather(*sampler_for(recovered, connect_retries=2).submit(1))

    assert run(ok)[0].text == "t0 t1 "
    assert recovered.attempts == 3

    down = FakeBackend(connect_failures=10)

    async def failing() -> None:
        await asyncio.gather(*sampler_for(down, connect_retries=1).submit(2))

    with pytest.raises(BackendUnavailable) as raised:
        run(failing)
    assert down.attempts == 2
    assert raised.value.status == 503 and raised.value.headers["Retry-After"] == "5"


def test_a_backend_4xx_reaches_the_strategy_as_it_is_and_is_never_retried() -> None:
    backend = FakeBackend(status=400, error_body={"error": {
        "message": "max_tokens is too large", "type": "BadRequestError", "param": "max_tokens",
        "code": 400}})

    async def test() -> None:
        await asyncio.gather(*sampler_for(backend).submit(3))

    with pytest.raises(ServingRefused) as raised:
        run(test)
    assert raised.value.status == 400 and raised.value.param == "max_tokens"
    assert raised.value.message == "max_tokens is too large"
    assert backend.attempts == 1


def test_a_silent_backend_is_a_504() -> None:
    async def test() -> None:
        await asyncio.gather(*sampler_for(FakeBackend(read_timeout=True), timeout_s=7).submit(1))

    with pytest.raises(BackendTimeout) as raised:
        run(test)
    assert raised.value.status == 504


def test_abort_outstanding_closes_the_backend_request() -> None:
    backend = FakeBackend(stall=True)

    async def test() -> Any:
        sampler = sampler_for(backend)
        pending = sampler.submit(3)
        while sampler.usage.completion_tokens < 3:
            await asyncio.sleep(0.01)
        await sampler.abort_outstanding()
        return pending, sampler.usage

    pending, usage = run(test)
    assert backend.closed == 1
    assert all(future.cancelled() for future in pending)
    assert usage.aborted == 3 and usage.completion_tokens == 3


def test_a_window_runs_on_while_any_of_its_samples_is_awaited() -> None:
    backend = FakeBackend()

    async def test() -> Any:
        sampler = sampler_for(backend)
        first, *rest = sampler.submit(3)
        first.cancel()  # type: ignore[attr-defined]
        samples = await asyncio.gather(*rest)
        return samples, sampler.usage

    samples, usage = run(test)
    assert [s.text for s in samples] == ["t10 t11 ", "t20 t21 "]
    assert usage.aborted == 1 and usage.completion_tokens == 6


def test_cancelling_every_sample_of_a_window_closes_its_request() -> None:
    backend = FakeBackend(stall=True)

    async def test() -> None:
        sampler = sampler_for(backend)
        pending = sampler.submit(2)
        while sampler.usage.completion_tokens < 2:
            await asyncio.sleep(0.01)
        for future in pending:
            future.cancel()  # type: ignore[attr-defined]
        for _ in range(50):
            if backend.closed:
                return
            await asyncio.sleep(0.01)

    run(test)
    assert backend.closed == 1


def test_a_strategy_runs_unchanged_on_the_remote_sampler() -> None:
    backend = FakeBackend()

    async def test() -> Any:
        sampler = sampler_for(backend)
        try:
            return await run_best_of_n(sampler, BestOfNOptions(n=4))
        finally:
            await sampler.abort_outstanding()

    result = run(test)
    assert len(result.samples) == 4 and [b["n"] for b in backend.bodies] == [4]


def test_topk_estimate_matches_the_in_process_formula() -> None:
    # The in-process sampler reads vLLM's FlatLogprobs: per position the sampled token, then
    # the top-k, with ranks; entries of rank ≤ 20 count.
    top = [-0.1 * (k + 1) for k in range(20)]
    flat = SimpleNamespace(
        start_indices=[0, 21], end_indices=[21, 41],
        # position 0: the sampled token ranked 57 (listed first), then the top 20
        logprobs=[-9.0, *top, *top], ranks=[57, *range(1, 21), *range(1, 21)])
    expected = topk_confidences(flat)
    # The chat API lists the first 20 entries of vLLM's map: for position 0, the sampled
    # token and the top 19 (the documented approximation); position 1 exactly the top 20.
    chat = chat_confidences([
        {"top_logprobs": [{"logprob": lp} for lp in [-9.0, *top[:19]]]},
        {"top_logprobs": [{"logprob": lp} for lp in top]},
    ])
    assert chat[1] == pytest.approx(expected[1])
    assert chat[0] == pytest.approx(-(sum(top[:19]) - 9.0) / 20)
    # The completion API gives the sampled token plus the top 20, keyed by token id: exact.
    completion = completion_confidences(
        ["token_id:7", "token_id:1"],
        [{"token_id:7": -9.0, **{f"token_id:{100 + k}": lp for k, lp in enumerate(top)}},
         {f"token_id:{k}": lp for k, lp in enumerate(top)}])
    assert completion == pytest.approx(expected)
