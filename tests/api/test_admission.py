"""Admission control: over the bound on outstanding engine sequences a request gets a 429 with
`Retry-After` at once; a strategy request is admitted with its whole sample budget or not at
all; every request gives its sequences back when it ends, however it ends; and the openai SDK's
own retry then gets through."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY

from server.admission import (
    RESERVATION_S,
    RETRY_AFTER_S,
    AdmissionControl,
    EngineLimits,
    engine_limits,
)
from server.exceptions import Unavailable
from tests.api.asgi_client import CHAT, COMPLETIONS, AppFactory, body_for, client_for, error_of
from tests.api.held_requests import HeldRequest, hold, wait_until
from tests.api.stub_engine import SERVED_MODEL, StubEngine
from tests.unit.fake_sampler import Scripted

pytestmark = pytest.mark.anyio

HANGING = [Scripted("never", hangs=True)] * 8
BEST_OF = {"name": "best_of_n", "selection": "self_certainty"}


def rejected(reason: str) -> float:
    value = REGISTRY.get_sample_value("refinery_admission_rejected_total", {"reason": reason})
    return value or 0.0


def outstanding_gauge() -> float:
    return REGISTRY.get_sample_value("refinery_outstanding_sequences") or 0.0


def admission_of(app: FastAPI) -> AdmissionControl:
    return app.state.admission


def strategy_body(n: int, *, path: str = CHAT, **fields: Any) -> dict[str, Any]:
    return body_for(path, strategy={**BEST_OF, "n": n}, **fields)


async def fill(app: FastAPI, stub: StubEngine, n: int, **fields: Any) -> HeldRequest:
    """A strategy request of budget `n` whose samples never finish, admitted and running."""
    stub.script = HANGING
    held = hold(app, CHAT, strategy_body(n, **fields))
    await wait_until(lambda: admission_of(app).outstanding == n and bool(stub.opened))
    return held


async def test_over_the_bound_a_request_gets_429_overloaded_with_retry_after_at_once(
    make_app: AppFactory, stub: StubEngine
) -> None:
    app = make_app(max_outstanding_sequences=8)
    held = await fill(app, stub, 8)
    before = rejected("overloaded")

    async with client_for(app) as client:
        response = await client.post(CHAT, json=body_for(CHAT))

    assert response.status_code == 429
    assert response.headers["retry-after"] == str(RETRY_AFTER_S)
    assert "x-request-id" in response.headers
    error = error_of(response)
    assert error["type"] == "rate_limit_error"
    assert error["code"] == "overloaded"
    assert "8 of 8" in error["message"]
    assert rejected("overloaded") == before + 1
    assert stub.chat.requests == []  # nothing of the refused request reached the engine
    held.leave()
    await held.finished()


async def test_a_strategy_is_admitted_with_its_whole_budget_or_not_at_all(
    make_app: AppFactory, stub: StubEngine
) -> None:
    app = make_app(max_outstanding_sequences=10)
    held = await fill(app, stub, 8)

    async with client_for(app) as client:
        too_big = await client.post(CHAT, json=strategy_body(4))  # 8 + 4 > 10
        # 8 + 2 = 10 would fit, but the refused strategy's 4 are reserved for its retry.
        held_back = await client.post(CHAT, json=body_for(CHAT, n=2))
        admission_of(app)._reserved_until = 0.0  # the reservation lapses (no retry came)
        fits = await client.post(CHAT, json=body_for(CHAT, n=2))

    assert too_big.status_code == 429
    assert error_of(too_big)["code"] == "overloaded"
    assert len(stub.opened) == 1, "the refused strategy opened no sampler"
    assert held_back.status_code == 429
    assert fits.status_code == 200
    assert admission_of(app).outstanding == 8  # the plain request gave its 2 back
    held.leave()
    await held.finished()
    assert admission_of(app).outstanding == 0


async def test_a_request_larger_than_the_bound_itself_is_a_400_not_a_retry(
    make_app: AppFactory,
) -> None:
    async with client_for(make_app(max_outstanding_sequences=4)) as client:
        response = await client.post(CHAT, json=strategy_body(8))
    assert response.status_code == 400
    error = error_of(response)
    assert (error["param"], error["code"]) == ("strategy.n", "over_server_cap")
    assert "ever admits (4)" in error["message"]


@pytest.mark.parametrize(("path", "fields", "slots"), [
    (CHAT, {"n": 5}, 5),
    (COMPLETIONS, {"n": 2, "prompt": ["a", "b", "c"]}, 6),
])
async def test_a_plain_request_over_the_per_request_sequence_cap_is_a_400(
    make_app: AppFactory, path: str, fields: dict[str, Any], slots: int
) -> None:
    before = rejected("over_cap")
    async with client_for(make_app(max_samples=4)) as client:
        response = await client.post(path, json=body_for(path, **fields))
    error = error_of(response)
    assert response.status_code == 400
    assert (error["param"], error["code"]) == ("n", "over_server_cap")
    assert f"{slots} sequences" in error["message"]
    assert rejected("over_cap") == before + 1


async def test_sequences_are_released_when_a_client_leaves_a_json_strategy(
    make_app: AppFactory, stub: StubEngine
) -> None:
    app = make_app(max_outstanding_sequences=8)
    gauge = outstanding_gauge()
    held = await fill(app, stub, 8)
    assert outstanding_gauge() == gauge + 8

    held.leave()
    await held.finished()

    assert held.status == 499
    assert sorted(stub.sampler.aborted) == list(range(8))
    assert admission_of(app).outstanding == 0
    assert outstanding_gauge() == gauge


async def test_sequences_are_released_when_a_client_leaves_a_stream_mid_way(
    make_app: AppFactory, stub: StubEngine
) -> None:
    app = make_app(max_outstanding_sequences=8)
    held = await fill(app, stub, 8, stream=True)
    await wait_until(lambda: held.status == 200)

    held.leave()
    await held.finished()

    assert sorted(stub.sampler.aborted) == list(range(8))
    assert admission_of(app).outstanding == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_sequences_are_released_when_the_strategy_fails(
    make_app: AppFactory, stub: StubEngine, stream: bool
) -> None:
    stub.script = [Scripted("boom", raises=Unavailable("the engine has stopped"))] * 3
    app = make_app(max_outstanding_sequences=8)
    async with client_for(app) as client:
        response = await client.post(CHAT, json=strategy_body(3, stream=stream))
    if stream:
        assert response.status_code == 200
        assert '"type": "service_unavailable_error"' in response.text
    else:
        assert response.status_code == 503
    assert admission_of(app).outstanding == 0


async def test_sequences_are_released_when_opening_the_sampler_is_refused(
    make_app: AppFactory, stub: StubEngine
) -> None:
    stub.open_error = ValueError("This model's maximum context length is 2048 tokens.")
    app = make_app(max_outstanding_sequences=8)
    async with client_for(app) as client:
        response = await client.post(CHAT, json=strategy_body(8))
    assert response.status_code == 400
    assert admission_of(app).outstanding == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_sequences_are_released_after_a_normal_answer(
    make_app: AppFactory, stub: StubEngine, stream: bool
) -> None:
    stub.script = [Scripted("The answer is 4.", certainty=1.0)] * 3
    app = make_app(max_outstanding_sequences=8)
    async with client_for(app) as client:
        answered = await client.post(CHAT, json=strategy_body(3, stream=stream))
        plain = await client.post(CHAT, json=body_for(CHAT, n=2))
    assert (answered.status_code, plain.status_code) == (200, 200)
    assert admission_of(app).outstanding == 0


async def test_the_openai_sdk_retries_a_429_by_itself_and_then_succeeds(
    make_app: AppFactory, stub: StubEngine
) -> None:
    app = make_app(max_outstanding_sequences=8)
    held = await fill(app, stub, 8)
    before = rejected("overloaded")
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    sdk = openai.AsyncOpenAI(base_url="http://test/v1", api_key="unused", http_client=http,
                             max_retries=2)

    call = asyncio.create_task(sdk.chat.completions.create(
        model=SERVED_MODEL, messages=[{"role": "user", "content": "2+2?"}]))
    await wait_until(lambda: rejected("overloaded") == before + 1)
    held.leave()  # capacity frees up before the SDK's retry (after Retry-After: 1 s)
    reply = await asyncio.wait_for(call, 30)

    assert reply.choices[0].message.content == "plain"
    assert rejected("overloaded") == before + 1  # one 429, then the retry got through
    await held.finished()
    await http.aclose()


async def test_without_retries_the_sdk_raises_rate_limit_error_with_the_body(
    make_app: AppFactory, stub: StubEngine
) -> None:
    app = make_app(max_outstanding_sequences=8)
    held = await fill(app, stub, 8)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    sdk = openai.AsyncOpenAI(base_url="http://test/v1", api_key="unused", http_client=http,
                             max_retries=0)
    with pytest.raises(openai.RateLimitError) as err:
        await sdk.completions.create(model=SERVED_MODEL, prompt="2+2=")
    assert err.value.status_code == 429
    assert err.value.code == "overloaded"
    assert err.value.response.headers["retry-after"] == str(RETRY_AFTER_S)
    held.leave()
    await held.finished()
    await http.aclose()


def test_the_default_bound_is_max_num_seqs_times_the_queue_factor() -> None:
    derived = AdmissionControl(bound=None, queue_factor=2.0)
    assert derived.capacity is None  # no engine yet: nothing is served before it loads
    derived.configure(EngineLimits(max_num_seqs=128, max_model_len=8192))
    assert derived.capacity == 256
    assert REGISTRY.get_sample_value("refinery_outstanding_sequences_limit") == 256

    fractional = AdmissionControl(bound=None, queue_factor=0.01)
    fractional.configure(EngineLimits(max_num_seqs=128, max_model_len=8192))
    assert fractional.capacity == 2  # rounded up, never 0

    explicit = AdmissionControl(bound=5, queue_factor=2.0)
    explicit.configure(EngineLimits(max_num_seqs=128, max_model_len=8192))
    assert explicit.capacity == 5
    assert explicit.limits == EngineLimits(128, 8192)


def test_engine_limits_count_every_data_parallel_rank() -> None:
    config = SimpleNamespace(
        scheduler_config=SimpleNamespace(max_num_seqs=128),
        model_config=SimpleNamespace(max_model_len=4096),
        parallel_config=SimpleNamespace(data_parallel_size=2),
    )
    assert engine_limits(config) == EngineLimits(max_num_seqs=256, max_model_len=4096)


def test_try_acquire_takes_all_or_nothing_and_release_gives_back() -> None:
    control = AdmissionControl(bound=10, queue_factor=2.0)
    assert control.try_acquire(8, now=0.0)
    assert not control.try_acquire(3, now=0.0)
    assert control.outstanding == 8
    assert control.try_acquire(2, now=RESERVATION_S)  # the refused 3 no longer reserved
    control.release(10)
    assert control.outstanding == 0
    lease = control.admit(4, param="n")
    lease.release()
    lease.release()  # idempotent
    assert control.outstanding == 0


def test_a_refused_large_request_is_not_starved_by_small_ones() -> None:
    control = AdmissionControl(bound=10, queue_factor=2.0)
    assert control.try_acquire(6, now=0.0)
    assert not control.try_acquire(8, now=0.0)  # refused: its 8 are now reserved
    assert control.reserved(now=0.0) == 8
    # 4 sequences are free, but smaller requests may only use what is beyond the 8 reserved.
    assert not control.try_acquire(1, now=0.5)
    control.release(6)  # capacity frees up; the small requests still leave it alone...
    assert not control.try_acquire(3, now=1.0)
    assert control.try_acquire(2, now=1.0)  # ...up to the bound minus the reservation
    assert control.try_acquire(8, now=1.0)  # the retry fits, and the reservation ends
    assert control.reserved(now=1.0) == 0
    control.release(10)
    # A reservation nobody comes back for lapses; one-sequence refusals reserve nothing.
    assert control.try_acquire(10, now=2.0)
    assert not control.try_acquire(4, now=2.0)
    assert not control.try_acquire(1, now=2.0)
    assert control.reserved(now=2.0) == 4
    assert control.reserved(now=2.0 + RESERVATION_S) == 0


async def test_a_full_server_refuses_before_parsing_the_request(
    make_app: AppFactory, stub: StubEngine
) -> None:
    app = make_app(max_outstanding_sequences=2)
    held = await fill(app, stub, 2)
    async with client_for(app) as client:
        # Not even a valid request: a full server says 429 before it looks at the fields.
        response = await client.post(CHAT, json={"model": SERVED_MODEL, "messages": "junk"})
    assert response.status_code == 429 and error_of(response)["code"] == "overloaded"
    held.leave()
    await held.finished()
