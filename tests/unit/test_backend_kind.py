"""Which backend the gateway is in front of, and what that changes: detection of a Refinery
backend (GET <base>/strategies) against scripted backends (httpx.MockTransport), and the app's
routes in process, which send a strategy request whole to a Refinery backend (byte for byte
both ways, after the gateway's own validation and admission) and sample any other backend."""

from __future__ import annotations

import asyncio
import json
from argparse import Namespace
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from server.app import create_app
from server.backend.backend_client import BackendClient, BackendConfig
from server.backend.backend_kind import detect_backend_kind
from server.backend.remote_engine import RemoteEngine
from server.settings import Settings
from tests.unit.test_remote_sampler import chat_chunk, sse

BASE = "http://backend:8000/v1"
MODELS = {"object": "list", "data": [{"id": "m", "object": "model", "parent": None}]}
LISTING = {"object": "list", "data": [{"name": "best_of_n", "description": "", "options": {}}],
           "presets": {"bon8": {"name": "best_of_n", "n": 8}}}
# What a Refinery backend answers a strategy request with; the gateway must not touch it.
STRATEGY_ANSWER = (b'{"id":"chatcmpl-1","object":"chat.completion","model":"m",'
                   b'"choices":[{"index":0,"message":{"role":"assistant","content":"5"},'
                   b'"finish_reason":"stop"}],"strategy":{"name":"best_of_n",'
                   b'"certainty_method":"exact"}}')
STRATEGY_EVENTS = (b": refinery: strategy running\n\n",
                   b'data: {"choices":[{"index":0,"delta":{"content":"5"}}]}\n\n',
                   b"data: [DONE]\n\n")


async def _events() -> AsyncIterator[bytes]:
    for event in STRATEGY_EVENTS:  # one event per chunk, as a server streams them
        yield event


@dataclass
class ScriptedBackend:
    """A Refinery or plain vLLM backend, as far as the gateway can tell: the model list, the
    strategies listing (Refinery only), strategy requests answered whole (Refinery) and
    streamed sub-requests with `n` choices (both)."""

    refinery: bool = True
    strategies: Callable[[], httpx.Response] | None = None  # overrides the listing's answer
    requests: list[httpx.Request] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [request.url.path for request in self.requests]

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path == "/v1/models":
            return httpx.Response(200, json=MODELS)
        if path == "/v1/strategies":
            if self.strategies is not None:
                return self.strategies()
            return (httpx.Response(200, json=LISTING) if self.refinery else
                    httpx.Response(404, json={"detail": "Not Found"}))
        body = json.loads(request.content)
        if self.refinery and "strategy" in body or "+" in body.get("model", ""):
            if body.get("stream"):
                return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                      content=_events())
            return httpx.Response(200, headers={"content-type": "application/json"},
                                  content=STRATEGY_ANSWER)
        choices = [sse(chat_chunk(index, 10 + index, -0.5, "stop"))
                   for index in range(body.get("n", 1))]
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=b"".join([*choices, b"data: [DONE]\n\n"]))


def engine_for(backend: ScriptedBackend | Callable[..., Any], kind: str = "auto") -> RemoteEngine:
    return RemoteEngine(BackendConfig(BASE, kind=kind), transport=httpx.MockTransport(backend))


def detect(handler: Callable[[httpx.Request], Any], timeout_s: float = 5.0) -> str | None:
    async def test() -> str | None:
        client = BackendClient(BackendConfig(BASE, connect_retries=0),
                               transport=httpx.MockTransport(handler))
        try:
            return await detect_backend_kind(client, timeout_s)
        finally:
            await client.aclose()

    return asyncio.run(test())


# --- detection --------------------------------------------------------------------------------


def test_the_strategies_listing_means_a_refinery_backend() -> None:
    backend = ScriptedBackend()
    assert detect(backend) == "refinery"
    assert backend.paths() == ["/v1/strategies"]


@pytest.mark.parametrize("answer", [
    httpx.Response(404, json={"detail": "Not Found"}),  # vLLM
    httpx.Response(401, json={"error": {"message": "no"}}),
    httpx.Response(200, json={"object": "list", "data": []}),  # a listing without presets
    httpx.Response(200, json={"object": "list", "data": ["best_of_n"], "presets": {}}),
    httpx.Response(200, text="<html>strategies</html>"),
])
def test_any_other_answer_means_a_plain_backend(answer: httpx.Response) -> None:
    assert detect(lambda request: answer) == "openai"


def test_a_backend_that_cannot_be_asked_says_nothing() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async def silent(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("never answered")

    assert detect(refuse) is None
    assert detect(silent, timeout_s=0.05) is None


def test_auto_detects_with_every_health_check_and_keeps_the_last_answer() -> None:
    backend = ScriptedBackend()
    engine = engine_for(backend)

    def broken() -> httpx.Response:
        raise httpx.ConnectError("refused")

    async def test() -> list[bool]:
        seen = [engine.forwards_strategies]
        await engine.check_health()
        seen.append(engine.forwards_strategies)
        backend.strategies = broken  # a failed question changes nothing
        await engine.check_health()
        seen.append(engine.forwards_strategies)
        backend.refinery, backend.strategies = False, None  # replaced by a vLLM backend
        await engine.check_health()
        seen.append(engine.forwards_strategies)
        await engine.shutdown()
        return seen

    assert asyncio.run(test()) == [False, True, True, False]
    assert engine.alive and engine.model_ids == ("m",)


@pytest.mark.parametrize(("kind", "forwards"), [("refinery", True), ("openai", False)])
def test_an_explicit_kind_is_never_asked(kind: str, forwards: bool) -> None:
    backend = ScriptedBackend(refinery=not forwards)  # the opposite of what it is told
    engine = engine_for(backend, kind)

    async def test() -> None:
        await engine.check_health()
        await engine.shutdown()

    asyncio.run(test())
    assert engine.forwards_strategies is forwards
    assert "/v1/strategies" not in backend.paths()


# --- the routes in gateway mode ----------------------------------------------------------------

BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "2+3?"}],
                   "temperature": 0.7, "max_tokens": 8,
                   "strategy": {"name": "best_of_n", "n": 4}}, separators=(",", ":")).encode()


def post(backend: ScriptedBackend, content: bytes, *, kind: str = "auto",
         headers: dict[str, str] | None = None, **settings: Any) -> httpx.Response:
    """POST `content` to the gateway's chat route, in process, in front of `backend`."""

    async def test() -> httpx.Response:
        app = create_app(Settings(api_keys=[], backend=BASE, backend_kind=kind,
                                  **{"max_outstanding_sequences": 64, **settings}),
                         Namespace(model=None))
        engine = engine_for(backend, kind)
        await engine.check_health()
        app.state.engine = engine
        app.state.lifecycle.mark_ready()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            response = await client.post("/v1/chat/completions", content=content,
                                         headers={"content-type": "application/json",
                                                  **(headers or {})})
            await response.aread()
        await engine.shutdown()
        return response

    return asyncio.run(test())


def strategy_requests(backend: ScriptedBackend) -> list[httpx.Request]:
    return [r for r in backend.requests if r.url.path == "/v1/chat/completions"]


def test_a_refinery_backend_gets_the_strategy_request_whole() -> None:
    backend = ScriptedBackend()
    response = post(backend, BODY)
    (sent,) = strategy_requests(backend)
    assert sent.content == BODY  # as the client sent it, strategy included
    assert sent.headers["x-session-id"].startswith("strategy-")
    assert response.status_code == 200 and response.content == STRATEGY_ANSWER


def test_a_streamed_strategy_and_a_model_alias_pass_through() -> None:
    backend = ScriptedBackend()
    body = json.loads(BODY)
    del body["strategy"]
    content = json.dumps({**body, "model": "m+bon8", "stream": True}).encode()
    response = post(backend, content, headers={"x-session-id": "client-7"})
    (sent,) = strategy_requests(backend)
    assert sent.content == content and sent.headers["x-session-id"] == "client-7"
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.content == b"".join(STRATEGY_EVENTS)


def test_a_plain_backend_is_sampled_by_the_gateway() -> None:
    backend = ScriptedBackend(refinery=False)
    response = post(backend, BODY)
    (sent,) = strategy_requests(backend)  # best_of_n's 4 samples: one request with n
    assert json.loads(sent.content)["n"] == 4 and "strategy" not in json.loads(sent.content)
    info = response.json()["strategy"]
    assert info["certainty_method"] == "topk" and info["samples"] == 4


def test_forced_openai_samples_a_refinery_backend_too() -> None:
    backend = ScriptedBackend()
    response = post(backend, BODY, kind="openai")
    assert response.json()["strategy"]["certainty_method"] == "topk"
    assert "strategy" not in json.loads(strategy_requests(backend)[0].content)


@pytest.mark.parametrize(("fields", "param", "code"), [
    # the gateway's validation
    ({"strategy": {"name": "best_of_n", "n": 4}, "n": 2}, "n", "unsupported_with_strategy"),
    # the gateway's admission: a sample budget over its bound of 16 sequences
    ({"strategy": {"name": "best_of_n", "n": 32}}, "strategy.n", "over_server_cap"),
])
def test_a_forwarded_strategy_is_validated_and_admitted_by_the_gateway_first(
        fields: dict[str, Any], param: str, code: str) -> None:
    backend = ScriptedBackend()
    content = json.dumps({**json.loads(BODY), **fields}).encode()
    response = post(backend, content, max_outstanding_sequences=16)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert response.json()["error"]["code"] == code
    assert strategy_requests(backend) == []
