"""Per-request caps a request cannot exceed: body size (413), wall-clock time (504, or an SSE
error event once a stream has begun, with every sub-request aborted), the tokens a strategy may
generate, the number of messages; and error messages that quote a client's value only as a
bounded, escaped excerpt."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from starlette.types import Message

from server.admission import EngineLimits
from server.exceptions import EXCERPT_CHARS, ServingRefused, excerpt
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
from tests.unit.fake_sampler import Scripted

pytestmark = pytest.mark.anyio

T = TypeVar("T")

BEST_OF_8 = {"name": "best_of_n", "n": 8, "selection": "self_certainty"}


async def within(call: Awaitable[T], seconds: float = 30) -> T:
    """A request that must end: a regression of the time limit fails here instead of hanging."""
    return await asyncio.wait_for(call, seconds)


def rejected(reason: str) -> float:
    value = REGISTRY.get_sample_value("refinery_admission_rejected_total", {"reason": reason})
    return value or 0.0


# --- body size ------------------------------------------------------------------------------

async def test_a_body_over_the_limit_by_content_length_is_413_before_it_is_read(
    make_app: AppFactory, stub: StubEngine
) -> None:
    before = rejected("body_too_large")
    body = body_for(CHAT, messages=[{"role": "user", "content": "x" * 5000}])
    async with client_for(make_app(max_body_bytes=4096)) as client:
        response = await client.post(CHAT, json=body)
    assert response.status_code == 413
    error = error_of(response)
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")
    assert "4096 bytes" in error["message"]
    assert "x-request-id" in response.headers
    assert rejected("body_too_large") == before + 1
    assert stub.chat.requests == []


async def test_a_chunked_body_is_cut_off_as_soon_as_it_passes_the_limit(
    make_app: AppFactory, stub: StubEngine
) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"model": "smollm2", "messages": [{"role": "user", "content": "'
        for _ in range(100):
            sent += 1
            yield b"y" * 1000
        yield b'"}]}'

    async with client_for(make_app(max_body_bytes=4096)) as client:
        response = await client.post(CHAT, content=chunks())  # no Content-Length: chunked
    assert response.status_code == 413
    assert error_of(response)["code"] == "request_too_large"
    assert stub.chat.requests == []


async def test_a_content_length_that_lies_does_not_get_past_the_limit(
    make_app: AppFactory, stub: StubEngine
) -> None:
    app = make_app(max_body_bytes=4096)
    parts = [b"z" * 3000] * 3
    sent: list[Message] = []

    async def receive() -> Message:
        part = parts.pop(0)
        return {"type": "http.request", "body": part, "more_body": bool(parts)}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": CHAT, "raw_path": CHAT.encode(),
             "root_path": "", "query_string": b"", "client": ("127.0.0.1", 1),
             "server": ("test", 80),
             "headers": [(b"host", b"test"), (b"content-length", b"100")]}
    await asyncio.wait_for(app(scope, receive, send), 5)
    assert sent[0]["status"] == 413
    assert len(parts) == 1, "read up to the limit and no further: the third part stays unread"
    assert stub.chat.requests == []


async def test_a_body_within_the_limit_is_served(make_app: AppFactory) -> None:
    async with client_for(make_app(max_body_bytes=4096)) as client:
        response = await client.post(CHAT, json=body_for(CHAT))
    assert response.status_code == 200


# --- wall-clock limit -----------------------------------------------------------------------

async def test_a_strategy_past_its_time_limit_is_aborted_and_answered_504(
    make_app: AppFactory, stub: StubEngine
) -> None:
    stub.script = [Scripted("never", hangs=True)] * 8
    app = make_app(request_timeout=0.2)
    async with client_for(app) as client:
        response = await within(client.post(CHAT, json=body_for(CHAT, strategy=BEST_OF_8)))
    assert response.status_code == 504
    error = error_of(response)
    assert (error["type"], error["code"]) == ("timeout_error", "request_timeout")
    assert "0.2 s" in error["message"]
    assert sorted(stub.sampler.aborted) == list(range(8))
    assert stub.sampler.outstanding == []
    assert app.state.admission.outstanding == 0


async def test_a_streamed_strategy_past_its_time_limit_ends_with_an_error_event(
    make_app: AppFactory, stub: StubEngine
) -> None:
    stub.script = [Scripted("never", hangs=True)] * 8
    app = make_app(request_timeout=0.2)
    async with client_for(app) as client:
        response = await within(client.post(
            CHAT, json=body_for(CHAT, strategy=BEST_OF_8, stream=True)))
    assert response.status_code == 200  # the stream had started
    events = sse_events(response.text)
    assert events[-1] == "data: [DONE]"
    error = sse_data(events[-2])["error"]
    assert (error["type"], error["code"]) == ("timeout_error", "request_timeout")
    assert sorted(stub.sampler.aborted) == list(range(8))
    assert app.state.admission.outstanding == 0


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
async def test_a_plain_request_past_its_time_limit_is_cancelled_and_answered_504(
    make_app: AppFactory, stub: StubEngine, path: str
) -> None:
    serving = stub.chat if path == CHAT else stub.completion
    serving.hangs = True
    app = make_app(request_timeout=0.2)
    async with client_for(app) as client:
        response = await within(client.post(path, json=body_for(path)))
    assert response.status_code == 504
    assert error_of(response)["code"] == "request_timeout"
    assert serving.cancelled
    assert app.state.admission.outstanding == 0


async def test_a_plain_stream_past_its_time_limit_is_closed_with_an_error_event(
    make_app: AppFactory, stub: StubEngine
) -> None:
    closed = asyncio.Event()

    async def engine_stream() -> AsyncIterator[str]:
        try:
            yield 'data: {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}\n\n'
            await asyncio.Event().wait()  # the engine never produces the next token
        finally:
            closed.set()  # cancelling vLLM's generator aborts its engine request

    stub.chat.reply = engine_stream()  # type: ignore[assignment]
    app = make_app(request_timeout=0.2)
    async with client_for(app) as client:
        response = await within(client.post(CHAT, json=body_for(CHAT, stream=True)))
    events = sse_events(response.text)
    assert response.status_code == 200
    assert sse_data(events[0])["choices"][0]["delta"]["content"] == "Hel"
    assert sse_data(events[1])["error"]["code"] == "request_timeout"
    assert events[2:] == ["data: [DONE]"]
    assert closed.is_set()
    assert app.state.admission.outstanding == 0


async def test_a_plain_stream_that_ends_in_time_is_passed_through_unchanged(
    make_app: AppFactory, stub: StubEngine
) -> None:
    chunks = [f'data: {{"n": {i}}}\n\n' for i in range(5)] + ["data: [DONE]\n\n"]

    async def engine_stream() -> AsyncIterator[str]:
        for chunk in chunks:
            yield chunk

    stub.chat.reply = engine_stream()  # type: ignore[assignment]
    async with client_for(make_app(request_timeout=5)) as client:
        response = await within(client.post(CHAT, json=body_for(CHAT, stream=True)))
    assert response.text == "".join(chunks)


# --- strategy tokens ------------------------------------------------------------------------

def configured(app: FastAPI, max_model_len: int = 2048) -> FastAPI:
    """The app as it is once an engine with this context length has loaded."""
    app.state.admission.configure(EngineLimits(max_num_seqs=256, max_model_len=max_model_len))
    return app


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_samples_times_max_tokens_over_the_cap_is_a_400_before_any_sample(
    make_app: AppFactory, stub: StubEngine, field: str
) -> None:
    stub.script = [Scripted("The answer is 4.", certainty=1.0)] * 8
    app = configured(make_app(max_strategy_tokens=100))
    async with client_for(app) as client:
        over = await client.post(CHAT, json=body_for(CHAT, strategy=BEST_OF_8, **{field: 20}))
        within = await client.post(CHAT, json=body_for(CHAT, strategy=BEST_OF_8, **{field: 12}))
    error = error_of(over)
    assert over.status_code == 400
    assert (error["param"], error["code"]) == ("max_tokens", "over_token_cap")
    assert "160 tokens (8 samples × max_tokens 20)" in error["message"]
    assert stub.opened[0].sampler.calls == []  # refused before the strategy ran
    assert within.status_code == 200
    assert app.state.admission.outstanding == 0


async def test_without_max_tokens_the_context_left_after_the_prompt_counts(
    make_app: AppFactory, stub: StubEngine
) -> None:
    app = configured(make_app(max_strategy_tokens=10_000), max_model_len=2048)
    async with client_for(app) as client:
        response = await client.post(CHAT, json=body_for(CHAT, strategy=BEST_OF_8))
    error = error_of(response)
    # The stub's prompt has 11 tokens: 8 × (2048 − 11).
    assert f"{8 * (2048 - 11)} tokens" in error["message"]
    assert "no max_tokens" in error["message"]
    assert error["param"] == "max_tokens"


async def test_a_completion_strategy_counts_its_default_max_tokens(
    make_app: AppFactory, stub: StubEngine
) -> None:
    # vLLM's CompletionRequest defaults max_tokens to 16: 8 × 16 = 128.
    app = configured(make_app(max_strategy_tokens=127))
    async with client_for(app) as client:
        response = await client.post(COMPLETIONS, json=body_for(COMPLETIONS, strategy=BEST_OF_8))
    assert "128 tokens" in error_of(response)["message"]


# --- messages ------------------------------------------------------------------------------

async def test_more_messages_than_the_cap_is_a_400(make_app: AppFactory, stub: StubEngine) -> None:
    messages = [{"role": "user", "content": "hi"}] * 4
    async with client_for(make_app(max_messages=3)) as client:
        over = await client.post(CHAT, json=body_for(CHAT, messages=messages))
        within = await client.post(CHAT, json=body_for(CHAT, messages=messages[:3]))
    error = error_of(over)
    assert over.status_code == 400
    assert (error["param"], error["code"]) == ("messages", "too_many_messages")
    assert within.status_code == 200
    assert len(stub.chat.requests) == 1


# --- reflected input ------------------------------------------------------------------------

HOSTILE = "<script>alert(1)</script>\n\x1b[31m" + "A" * 10_000


@pytest.mark.parametrize(("fields", "param"), [
    ({"strategy": HOSTILE}, "strategy"),
    ({"strategy": {"name": HOSTILE}}, "strategy.name"),
    ({"messages": [{"role": HOSTILE, "content": "hi"}]}, "messages.0.role"),
])
async def test_errors_quote_a_clients_value_only_as_a_short_escaped_excerpt(
    client: Any, fields: dict[str, Any], param: str
) -> None:
    response = await client.post(CHAT, json=body_for(CHAT, **fields))
    error = error_of(response)
    assert response.status_code == 400
    assert error["param"] == param
    message = error["message"]
    assert "A" * (EXCERPT_CHARS + 1) not in message
    assert "\n" not in message and "\x1b" not in message  # escaped, as repr writes them
    assert "…" in message


async def test_every_error_message_is_bounded_whoever_wrote_it(
    make_app: AppFactory, stub: StubEngine
) -> None:
    stub.open_error = ServingRefused(404, f"The model `{'m' * 50_000}` does not exist.")
    async with client_for(make_app()) as client:
        response = await client.post(CHAT, json=body_for(CHAT, strategy="bon8"))
    message = error_of(response)["message"]
    assert response.status_code == 404
    assert len(message) <= 1000 and message.endswith("…")


def test_excerpt_keeps_short_values_whole_and_cuts_long_ones() -> None:
    assert excerpt("wizard") == "'wizard'"
    long = excerpt("x" * 500)
    assert len(long) == EXCERPT_CHARS and long.endswith("…")
    assert excerpt("a\nb") == "'a\\nb'"


async def test_an_invalid_json_body_error_does_not_echo_the_body(client: Any) -> None:
    secret_looking = b"{" + b"q" * 5000
    response = await client.post(CHAT, content=secret_looking,
                                 headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "qqqq" not in json.dumps(response.json())
