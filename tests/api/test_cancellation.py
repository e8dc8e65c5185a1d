"""A client that goes away cancels its work: vLLM's serving call, or every sample of a
strategy. Driven as a server drives the app, with a `receive` that reports the disconnect
once the work is under way (httpx's ASGITransport only disconnects after the response)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from starlette.types import Message

from tests.api.asgi_client import CHAT, COMPLETIONS, AppFactory, body_for, requests_counted
from tests.api.stub_engine import StubEngine
from tests.unit.fake_sampler import Scripted

pytestmark = pytest.mark.anyio


async def call_then_disconnect(
    app: Any, path: str, body: dict[str, Any], disconnect_when: Callable[[], bool]
) -> list[Message]:
    """POST `body` to `path`; once `disconnect_when()` holds, the client has gone. Returns
    what the app sent."""
    sent: list[Message] = []
    body_read = False

    async def receive() -> Message:
        nonlocal body_read
        if not body_read:
            body_read = True
            return {"type": "http.request", "body": json.dumps(body).encode(),
                    "more_body": False}
        while not disconnect_when():
            await asyncio.sleep(0.001)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": [(b"host", b"test"),
                                         (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 50000), "server": ("test", 80),
    }
    await asyncio.wait_for(app(scope, receive, send), timeout=5)
    return sent


def status_of(sent: list[Message]) -> int:
    (start,) = [message for message in sent if message["type"] == "http.response.start"]
    return start["status"]


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
async def test_a_plain_request_whose_client_leaves_is_cancelled_and_recorded_as_499(
    make_app: AppFactory, stub: StubEngine, path: str
) -> None:
    serving = stub.chat if path == CHAT else stub.completion
    serving.hangs = True
    before = requests_counted(path, 499)

    sent = await call_then_disconnect(make_app(), path, body_for(path),
                                      serving.started.is_set)

    assert serving.cancelled
    assert status_of(sent) == 499
    assert requests_counted(path, 499) == before + 1


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
async def test_a_strategy_request_whose_client_leaves_aborts_every_sample_and_is_a_499(
    make_app: AppFactory, stub: StubEngine, path: str
) -> None:
    stub.script = [Scripted("never", hangs=True)] * 8
    before = requests_counted(path, 499)

    sent = await call_then_disconnect(make_app(), path, body_for(path, strategy="bon8"),
                                      lambda: bool(stub.opened and stub.sampler.calls))

    assert stub.sampler.outstanding == []
    assert sorted(stub.sampler.aborted) == list(range(8))
    assert status_of(sent) == 499
    assert requests_counted(path, 499) == before + 1


async def test_a_streamed_strategy_whose_client_leaves_aborts_every_sample(
    make_app: AppFactory, stub: StubEngine
) -> None:
    stub.script = [Scripted("never", hangs=True)] * 8

    sent = await call_then_disconnect(make_app(), CHAT, body_for(CHAT, strategy="bon8",
                                                                 stream=True),
                                      lambda: bool(stub.opened and stub.sampler.calls))

    assert stub.sampler.outstanding == []
    assert sorted(stub.sampler.aborted) == list(range(8))
    assert status_of(sent) == 200  # the stream had started: its status cannot change
