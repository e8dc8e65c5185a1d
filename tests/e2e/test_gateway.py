"""Gateway mode end to end: `refinery serve --backend <the session server>/v1`, a Refinery with
no engine of its own in front of a live engine server, driven by the official openai client.

Plain requests must come back as the backend wrote them; strategies must run through the
gateway's remote sampler with the same response shapes; a client that leaves must cancel the
backend's requests; and a backend that is silent or gone must give clean errors, never a hang.
The session server is a Refinery, so two gateways stand in front of it (a gateway starts in
seconds: it loads no model): `gateway` told `--backend-kind openai`, which samples it as it
would sample `vllm serve` (the remote-sampler path), and `refinery_gateway`, which detects a
Refinery backend and forwards strategy requests whole. One more gateway stands in front of a
scripted backend in this process (a socket server that answers the model list and never
anything else) for the failure modes.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.e2e.disconnects import abandoned_request
from tests.e2e.prometheus import kv_block_size, metric_value, scrape, wait_for_metric
from tests.servers import ServerProcess, free_port, running, start_refinery

CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "What is 2+3?"}],
        "temperature": 0, "max_tokens": 12}
LONG_STRATEGY = {"model": "smollm2", "messages": [{"role": "user", "content": "Count to 1000."}],
                 "temperature": 0.8, "max_tokens": 3000, "ignore_eos": True,
                 "strategy": {"name": "best_of_n", "n": 8}}
# What differs between two identical requests: the response id and its creation time.
_VOLATILE = re.compile(r'"(id|created)":\s*("[^"]*"|\d+)')


def normalised(text: str) -> str:
    return _VOLATILE.sub(r'"\1":_', text)


@pytest.fixture(scope="module")
def gateway(server: ServerProcess, logs_dir: Path) -> Iterator[ServerProcess]:
    # Told the backend is plain OpenAI-compatible: strategies run in the gateway.
    process = start_refinery(logs_dir, "--backend", f"{server.base_url}/v1",
                             "--backend-kind", "openai", name="gateway")
    with running(process, timeout=180) as live:
        yield live


@pytest.fixture(scope="module")
def refinery_gateway(server: ServerProcess, logs_dir: Path) -> Iterator[ServerProcess]:
    """A gateway left to detect its backend (`--backend-kind auto`, the default)."""
    process = start_refinery(logs_dir, "--backend", f"{server.base_url}/v1",
                             name="gateway-refinery")
    with running(process, timeout=180) as live:
        yield live


@pytest.fixture(scope="module")
def gateway_client(gateway: ServerProcess) -> OpenAI:
    return OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0,
                  timeout=120)


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", CHAT),
    ("/v1/completions", {"model": "smollm2", "prompt": "The capital of France is",
                         "temperature": 0, "max_tokens": 8, "logprobs": 2}),
])
def test_plain_requests_come_back_as_the_backend_wrote_them(
        server: ServerProcess, gateway: ServerProcess, path: str, body: dict[str, Any]) -> None:
    direct = httpx.post(f"{server.base_url}{path}", json=body, timeout=60)
    proxied = httpx.post(f"{gateway.base_url}{path}", json=body, timeout=60)
    assert proxied.status_code == direct.status_code == 200
    assert normalised(proxied.text) == normalised(direct.text)
    assert proxied.headers["content-type"] == direct.headers["content-type"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_plain_streams_come_back_as_the_backend_wrote_them(
        server: ServerProcess, gateway: ServerProcess, path: str) -> None:
    body = (CHAT if path.endswith("chat/completions") else
            {"model": "smollm2", "prompt": "One, two,", "temperature": 0, "max_tokens": 10})
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}

    def events(base: str) -> str:
        with httpx.stream("POST", f"{base}{path}", json=body, timeout=60) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            return "".join(response.iter_text())

    direct, proxied = events(server.base_url), events(gateway.base_url)
    assert normalised(proxied) == normalised(direct)
    assert proxied.endswith("data: [DONE]\n\n") and '"usage"' in proxied


def test_a_backend_refusal_is_passed_through(server: ServerProcess,
                                             gateway: ServerProcess) -> None:
    body = {**CHAT, "model": "no-such-model"}
    direct = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=30)
    proxied = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=30)
    assert proxied.status_code == direct.status_code == 404
    assert proxied.json() == direct.json()


def test_models_are_the_backends_plus_preset_aliases(gateway_client: OpenAI) -> None:
    ids = [model.id for model in gateway_client.models.list().data]
    assert "smollm2" in ids and "smollm2+bon8" in ids
    assert not any(model.count("+") > 1 for model in ids)


def test_self_consistency_through_the_gateway(gateway_client: OpenAI) -> None:
    response = gateway_client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "What is 3+4? Answer briefly."}],
        temperature=0.7, max_tokens=24, seed=7,
        extra_body={"strategy": {"name": "self_consistency", "max_samples": 6,
                                 "return_candidates": True}})
    info = response.model_extra["strategy"]
    assert info["name"] == "self_consistency" and info["samples"] == 6
    assert info["certainty_method"] is None  # a vote asks the backend for no logprobs
    candidates = info["candidates"]
    assert len(candidates) == 6 and all(c["certainty"] is None for c in candidates)
    assert response.choices[0].message.content in {c["text"] for c in candidates}
    # Usage: the prompt once (its samples share one prefill), every sample's tokens.
    assert response.usage.completion_tokens == sum(c["tokens"] for c in candidates)
    assert 0 < response.usage.prompt_tokens < 100


def test_best_of_n_by_model_alias_through_the_gateway(gateway_client: OpenAI) -> None:
    response = gateway_client.completions.create(
        model="smollm2+bon8", prompt="Name a colour:", temperature=0.8, max_tokens=8)
    info = response.model_extra["strategy"]
    assert info["name"] == "best_of_n" and info["samples"] == 8
    assert info["certainty_method"] == "topk"
    assert response.model == "smollm2" and response.choices[0].text


def test_a_streamed_strategy_through_the_gateway(gateway_client: OpenAI) -> None:
    stream = gateway_client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Say hello."}],
        temperature=0.7, max_tokens=16, stream=True, stream_options={"include_usage": True},
        extra_body={"strategy": {"name": "best_of_n", "n": 3}})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text and finals and finals[-1].model_extra["strategy"]["samples"] == 3
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_a_disconnect_cancels_the_backend_requests(server: ServerProcess,
                                                   gateway: ServerProcess) -> None:
    assert wait_for_metric(server.base_url, "vllm:num_requests_running", 0, timeout=10) == 0

    with abandoned_request(gateway.base_url, LONG_STRATEGY):
        # best_of_n draws its 8 samples as one n=8 request: 8 sequences running in the backend.
        assert wait_for_metric(gateway.base_url, "refinery_subrequests_running", 8,
                               timeout=30) == 8
        assert wait_for_metric(server.base_url, "vllm:num_requests_running", 8,
                               timeout=30) == 8
    assert wait_for_metric(gateway.base_url, "refinery_subrequests_running", 0, timeout=5) == 0
    assert wait_for_metric(server.base_url, "vllm:num_requests_running", 0, timeout=5) == 0


def test_a_streamed_disconnect_cancels_the_backend_requests(server: ServerProcess,
                                                            gateway: ServerProcess) -> None:
    with httpx.stream("POST", f"{gateway.base_url}/v1/chat/completions",
                      json={**LONG_STRATEGY, "stream": True}, timeout=60) as response:
        lines = response.iter_lines()  # kept referenced: dropping it closes the connection
        assert next(lines).startswith(":")
        assert wait_for_metric(server.base_url, "vllm:num_requests_running", 8,
                               timeout=30) == 8
    assert wait_for_metric(gateway.base_url, "refinery_subrequests_running", 0, timeout=5) == 0
    assert wait_for_metric(server.base_url, "vllm:num_requests_running", 0, timeout=5) == 0


def test_a_plain_stream_disconnect_cancels_the_backend_request(server: ServerProcess,
                                                               gateway: ServerProcess) -> None:
    body = {**LONG_STRATEGY, "stream": True}
    del body["strategy"]
    with httpx.stream("POST", f"{gateway.base_url}/v1/chat/completions", json=body,
                      timeout=60) as response:
        lines = response.iter_lines()
        assert any(next(lines).startswith("data:") for _ in range(6))
        assert wait_for_metric(server.base_url, "vllm:num_requests_running", 1,
                               timeout=30) == 1
    assert wait_for_metric(server.base_url, "vllm:num_requests_running", 0, timeout=5) == 0


def test_the_gateway_exports_its_own_metrics_and_no_engine_metrics(
        gateway: ServerProcess) -> None:
    names = {name for name, _ in scrape(gateway.base_url)}
    assert "refinery_requests_total" in names
    assert "refinery_subrequest_tokens_total" in names
    assert not [name for name in names if name.startswith("vllm:")]


def test_a_refinery_backend_runs_a_forwarded_strategy_in_its_own_engine(
        server: ServerProcess, refinery_gateway: ServerProcess) -> None:
    """One request reaches the backend and fans out in its engine: its strategy counter moves,
    the gateway's does not, 7 of the 8 samples read the prompt from the prefix cache, and the
    certainty is the engine's exact one."""
    long_question = [{"role": "user", "content": "A story. " + "The dog ran. " * 180
                      + "How many times did the dog run?"}]
    counted = "refinery_strategy_requests_total"
    hits = "vllm:prefix_cache_hits_total"
    before = (metric_value(server.base_url, counted, strategy="best_of_n"),
              metric_value(server.base_url, hits))
    client = OpenAI(base_url=f"{refinery_gateway.base_url}/v1", api_key="unused",
                    max_retries=0, timeout=120)
    reply = client.chat.completions.create(
        model="smollm2", messages=long_question, temperature=0.8, max_tokens=4, seed=11,
        extra_body={"strategy": {"name": "best_of_n", "n": 8, "return_candidates": True}})
    info = reply.model_extra["strategy"]
    assert info["name"] == "best_of_n" and info["samples"] == 8
    assert info["certainty_method"] == "exact"
    assert metric_value(server.base_url, counted, strategy="best_of_n") == before[0] + 1
    assert metric_value(refinery_gateway.base_url, counted) == 0
    prompt, block = reply.usage.prompt_tokens, kv_block_size(server.base_url)
    assert prompt > 600
    reused = metric_value(server.base_url, hits) - before[1]
    assert reused >= 7 * (prompt // block) * block, (reused, prompt)


def test_a_forwarded_strategy_stream_passes_through(refinery_gateway: ServerProcess) -> None:
    body = {"model": "smollm2+bon8", "messages": [{"role": "user", "content": "Say hello."}],
            "temperature": 0.7, "max_tokens": 12, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{refinery_gateway.base_url}/v1/chat/completions", json=body,
                      timeout=120) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert lines[0] == ": refinery: strategy running"  # the backend's own stream
    events = [json.loads(line[5:]) for line in lines if line.startswith("data: {")]
    finals = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
    info = finals[-1]["strategy"]
    assert info["name"] == "best_of_n" and info["samples"] == 8
    assert info["certainty_method"] == "exact"
    assert events[-1]["usage"]["completion_tokens"] > 0 and lines[-1] == "data: [DONE]"


@pytest.mark.parametrize("stream", [False, True])
def test_a_disconnect_aborts_the_forwarded_strategys_sub_requests(
        server: ServerProcess, refinery_gateway: ServerProcess, stream: bool) -> None:
    """The client leaves the gateway: the one forwarded request is closed, and the backend
    aborts every sub-request it fanned out."""
    assert wait_for_metric(server.base_url, "refinery_subrequests_running", 0, timeout=10) == 0
    url = f"{refinery_gateway.base_url}/v1/chat/completions"

    if stream:
        with httpx.stream("POST", url, json={**LONG_STRATEGY, "stream": True},
                          timeout=60) as response:
            lines = response.iter_lines()  # kept referenced: dropping it closes the connection
            assert next(lines).startswith(":")
            assert wait_for_metric(server.base_url, "refinery_subrequests_running", 8,
                                   timeout=30) == 8
    else:
        with abandoned_request(refinery_gateway.base_url, LONG_STRATEGY):
            assert wait_for_metric(server.base_url, "refinery_subrequests_running", 8,
                                   timeout=30) == 8
    assert wait_for_metric(server.base_url, "refinery_subrequests_running", 0, timeout=5) == 0
    assert wait_for_metric(server.base_url, "vllm:num_requests_running", 0, timeout=5) == 0


class SilentBackend:
    """A backend that lists one model and never answers anything else: the gateway's read
    timeout must turn that into a 504. Runs on its own event loop in a thread."""

    MODELS = json.dumps({"object": "list", "data": [
        {"id": "smollm2", "object": "model", "owned_by": "test", "parent": None}]}).encode()

    def __init__(self, port: int) -> None:
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"GET /v1/models"):
                    await asyncio.Event().wait()  # never answered
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(self.MODELS), self.MODELS))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()

    def start(self) -> None:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._answer, "127.0.0.1", self.port), self._loop).result(10)

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def wait_for_status(url: str, status: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    seen = httpx.get(url, timeout=5).status_code
    while seen != status and time.monotonic() < deadline:
        time.sleep(0.2)
        seen = httpx.get(url, timeout=5).status_code
    return seen


def test_a_silent_then_killed_backend_gives_clean_errors(logs_dir: Path) -> None:
    backend = SilentBackend(free_port())
    backend.start()
    process = start_refinery(logs_dir, "--backend", f"http://127.0.0.1:{backend.port}/v1",
                             "--backend-timeout", "2", name="gateway-broken",
                             env={"REFINERY_BACKEND_RETRIES": "1"})
    try:
        with running(process, timeout=180) as broken:
            url = f"{broken.base_url}/v1/chat/completions"
            # Silent: a 504 after the backend timeout, plain or strategy, streamed or not.
            plain = httpx.post(url, json=CHAT, timeout=30)  # the client's timeout: no hang
            assert plain.status_code == 504, plain.text
            assert plain.json()["error"]["code"] == "backend_timeout"
            strategy = httpx.post(url, json={**LONG_STRATEGY, "max_tokens": 8}, timeout=30)
            assert strategy.status_code == 504 and strategy.json()["error"]["type"] == \
                "timeout_error"
            with httpx.stream("POST", url, json={**LONG_STRATEGY, "max_tokens": 8,
                                                 "stream": True}, timeout=30) as response:
                events = [line for line in response.iter_lines() if line.startswith("data:")]
            assert response.status_code == 200
            assert json.loads(events[0][5:])["error"]["code"] == "backend_timeout"
            assert events[-1] == "data: [DONE]"
            # Killed: /ready turns 503 within a few polls, and requests get a 503 with
            # Retry-After at once.
            backend.stop()
            assert wait_for_status(f"{broken.base_url}/ready", 503, timeout=15) == 503
            for body in (CHAT, {**LONG_STRATEGY, "max_tokens": 8}):
                refused = httpx.post(url, json=body, timeout=30)
                assert refused.status_code == 503
                assert refused.headers["retry-after"] == "5"
                assert refused.json()["error"]["code"] == "backend_unavailable"
            assert httpx.get(f"{broken.base_url}/health", timeout=5).status_code == 200
    finally:
        if backend._thread.is_alive():
            backend.stop()

