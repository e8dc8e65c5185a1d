"""What a strategy request answers: the chosen sample as a normal response plus `strategy`,
streamed in a fixed event order; a failure as the same error streamed or not; and no sample
left running after the answer, whatever the strategy did."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from itertools import takewhile
from typing import Any

import httpx
import pytest

from server.exceptions import InvalidRequest, Unavailable
from strategies.base import REGISTRY, Result, Sampler, Strategy, StrategyOptions, register
from tests.api.asgi_client import (
    CHAT,
    COMPLETIONS,
    AppFactory,
    body_for,
    client_for,
    error_of,
    sse_data,
    sse_events,
)
from tests.api.stub_engine import StubEngine
from tests.unit.fake_sampler import Scripted, answers

pytestmark = pytest.mark.anyio

CHOSEN_TEXT = "Adding two and two gives four. The answer is 4."
# best_of_n by self-certainty picks the most certain sample: the second.
BEST_OF_3 = {"name": "best_of_n", "n": 3, "selection": "self_certainty"}
SCRIPT = [
    Scripted("The answer is 5.", certainty=1.0),
    Scripted(CHOSEN_TEXT, certainty=3.0),
    Scripted("Hmm. The answer is 4.", certainty=2.0),
]
CHUNK_OBJECT = {CHAT: "chat.completion.chunk", COMPLETIONS: "text_completion"}


@pytest.fixture
def stub() -> StubEngine:
    return StubEngine(script=SCRIPT)


def split_stream(text: str) -> tuple[list[str], list[dict[str, Any]]]:
    """A strategy stream → its leading SSE comments and its JSON chunks, checked to end with
    `[DONE]` and to have no comment after the first chunk."""
    events = sse_events(text)
    comments = list(takewhile(lambda event: event.startswith(":"), events))
    data = events[len(comments):]
    assert data[-1] == "data: [DONE]", events
    assert not any(event.startswith(":") for event in data), events
    return comments, [sse_data(event) for event in data[:-1]]


def content_of(path: str, chunk: dict[str, Any]) -> str | None:
    choice = chunk["choices"][0]
    return choice["delta"].get("content") if path == CHAT else choice["text"]


@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
async def test_a_streamed_strategy_sends_comment_role_content_strategy_usage_then_done(
    client: httpx.AsyncClient, stub: StubEngine, path: str, include_usage: bool
) -> None:
    fields: dict[str, Any] = {"strategy": BEST_OF_3, "stream": True}
    if include_usage:
        fields["stream_options"] = {"include_usage": True}

    response = await client.post(path, json=body_for(path, **fields))

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    comments, chunks = split_stream(response.text)
    assert comments and comments[0].startswith(": ")  # before the strategy's answer exists
    assert {chunk["object"] for chunk in chunks} == {CHUNK_OBJECT[path]}
    assert len({chunk["id"] for chunk in chunks}) == 1
    if include_usage:
        *chunks, usage = chunks
        assert usage["choices"] == []
        assert usage["usage"] == {"prompt_tokens": 11, "completion_tokens": 42,
                                  "total_tokens": 53}
    *chunks, closing = chunks
    assert closing["choices"][0]["finish_reason"] == "stop"
    assert closing["strategy"]["name"] == "best_of_n"
    assert closing["strategy"]["samples"] == 3
    assert content_of(path, closing) in (None, "")
    if path == CHAT:
        role, *chunks = chunks
        assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len(chunks) > 1  # the text comes in pieces, not as one chunk
    for chunk in chunks:
        assert "strategy" not in chunk and "usage" not in chunk
        assert chunk["choices"][0]["finish_reason"] is None
        assert "role" not in chunk["choices"][0].get("delta", {})
    assert "".join(content_of(path, chunk) or "" for chunk in chunks) == CHOSEN_TEXT


async def test_a_streamed_strategy_sends_keep_alives_while_it_works(
    make_app: AppFactory, stub: StubEngine
) -> None:
    stub.script = [Scripted(CHOSEN_TEXT, certainty=1.0, delay=0.1)]
    async with client_for(make_app(strategy_keepalive=0.02)) as client:
        response = await client.post(CHAT, json=body_for(
            CHAT, strategy={"name": "best_of_n", "n": 1}, stream=True))

    comments, chunks = split_stream(response.text)
    assert comments.count(": keep-alive") >= 2, comments
    assert chunks[-1]["strategy"]["samples"] == 1


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
async def test_a_strategy_response_carries_the_chosen_sample_and_the_strategy_object(
    client: httpx.AsyncClient, stub: StubEngine, path: str
) -> None:
    stub.script = answers("4", "4", "5", "4", "5", "4", "4", "4", certainty=1.0)
    stub.script[3] = Scripted(CHOSEN_TEXT, certainty=9.0)

    response = await client.post(path, json=body_for(path, strategy="bon8"))

    assert response.status_code == 200, response.text
    body = response.json()
    choice = body["choices"][0]
    if path == CHAT:
        assert body["object"] == "chat.completion"
        assert choice["message"] == {**choice["message"], "role": "assistant",
                                     "content": CHOSEN_TEXT}
    else:
        assert body["object"] == "text_completion"
        assert choice["text"] == CHOSEN_TEXT
    assert choice["finish_reason"] == "stop"
    assert body["usage"] == {**body["usage"], "prompt_tokens": 11, "completion_tokens": 42,
                             "total_tokens": 53}
    info = body["strategy"]
    assert info == {
        **info,
        "name": "best_of_n",
        "preset": "bon8",
        "selection": "self_certainty",
        "samples": 8,
        "max_samples": 8,
        "stopped_early": False,
        "answer": "4",
        "votes": {"4": 6, "5": 2},
        "certainty_method": "topk",
        # The SamplerUsage the engine kept, as it stood when the strategy finished.
        "usage": {"prompt_tokens": 11, "completion_tokens": 42, "sub_requests": 3,
                  "aborted": 1},
    }
    assert "candidates" not in info
    assert info["elapsed_ms"] >= 0


async def test_return_candidates_lists_every_sample_and_marks_the_chosen_one(
    client: httpx.AsyncClient, stub: StubEngine
) -> None:
    response = await client.post(CHAT, json=body_for(
        CHAT, strategy={**BEST_OF_3, "return_candidates": True}))

    candidates = response.json()["strategy"]["candidates"]
    assert [c["index"] for c in candidates] == [0, 1, 2]
    assert [c["chosen"] for c in candidates] == [False, True, False]
    assert [c["answer"] for c in candidates] == ["5", "4", "4"]
    assert [c["certainty"] for c in candidates] == [1.0, 3.0, 2.0]


FAILURES = [
    pytest.param(InvalidRequest("the continuation is too long", param="max_tokens",
                                code="context_length_exceeded"), 400, id="refinery-400"),
    pytest.param(Unavailable("the engine is busy", code="engine_busy"), 503, id="refinery-503"),
    pytest.param(ValueError("vLLM refused a sampling parameter"), 400, id="value-error"),
    pytest.param(RuntimeError("a bug in the sampler"), 500, id="unexpected"),
]


@pytest.mark.parametrize(("failure", "status"), FAILURES)
async def test_a_strategy_failing_mid_stream_sends_the_error_the_json_path_answers(
    client: httpx.AsyncClient, stub: StubEngine, caplog: pytest.LogCaptureFixture,
    failure: Exception, status: int,
) -> None:
    stub.script = [Scripted("fine", certainty=1.0), Scripted("x", raises=failure),
                   Scripted("slow", hangs=True)]
    request = body_for(CHAT, strategy=BEST_OF_3)

    with caplog.at_level(logging.ERROR):
        answered = await client.post(CHAT, json=request)
        logged_for_json = [r for r in caplog.records if r.exc_info]
        caplog.clear()
        streamed = await client.post(CHAT, json={**request, "stream": True})
        logged_for_stream = [r for r in caplog.records if r.exc_info]

    assert answered.status_code == status, answered.text
    error = error_of(answered)
    assert streamed.status_code == 200  # sent before the strategy ran
    comments, chunks = split_stream(streamed.text)
    assert comments and chunks == [{"error": error}]
    if status == 500:  # nothing of the internals leaks
        assert error == {"message": "internal server error", "type": "server_error",
                         "param": None, "code": "internal_error"}
    # The unexpected is logged once with its traceback, streamed or not; a 4xx not at all.
    if status == 500:
        assert len(logged_for_json) == len(logged_for_stream) == 1
    elif status < 500:
        assert logged_for_json == logged_for_stream == []
    for opened in stub.opened:
        assert opened.sampler.outstanding == []


class _LeakyOptions(StrategyOptions):
    def sample_budget(self) -> int:
        return 3


async def _run_leaky(sampler: Sampler, options: _LeakyOptions) -> Result:
    """Starts two samples it never waits for, answers from a third, and aborts nothing."""
    sampler.submit(2)
    (finishing,) = sampler.submit(1)
    sample = await finishing
    return Result(chosen=sample, samples=(sample,), answers=(None,), answer=None, votes={})


@pytest.fixture
def leaky_strategy() -> Iterator[Strategy[_LeakyOptions]]:
    strategy = register(Strategy(name="leaky_test_only", description="leaves samples running",
                                 options=_LeakyOptions, run=_run_leaky))
    try:
        yield strategy
    finally:
        del REGISTRY[strategy.name]


@pytest.mark.parametrize("stream", [False, True])
async def test_the_api_aborts_samples_a_strategy_left_running(
    client: httpx.AsyncClient, stub: StubEngine, leaky_strategy: Strategy[_LeakyOptions],
    stream: bool,
) -> None:
    stub.script = [Scripted("never", hangs=True), Scripted("never", hangs=True),
                   Scripted(CHOSEN_TEXT)]

    response = await asyncio.wait_for(client.post(CHAT, json=body_for(
        CHAT, strategy={"name": leaky_strategy.name}, stream=stream)), timeout=5)

    assert response.status_code == 200, response.text
    if stream:
        _, chunks = split_stream(response.text)
        assert chunks[-1]["strategy"]["samples"] == 1
    else:
        assert response.json()["choices"][0]["message"]["content"] == CHOSEN_TEXT
    assert stub.sampler.outstanding == []
    assert sorted(stub.sampler.aborted) == [0, 1]
    assert stub.sampler.finished == [2]
