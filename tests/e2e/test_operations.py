"""Health, readiness, metrics, request ids, and client disconnects aborting engine work."""

from __future__ import annotations

import httpx
import pytest
from openai import OpenAI

from tests.e2e.prometheus import metric_value, scrape, wait_for_metric
from tests.servers import ServerProcess

RUNNING = "vllm:num_requests_running"
# Long enough that only an abort can end it within the test's patience (~55 tok/s per stream).
ENDLESS = {"model": "smollm2", "prompt": "Count forever: 1, 2, 3,", "max_tokens": 4000,
           "ignore_eos": True, "temperature": 0.8}


def test_health_and_ready_are_200_when_serving(server: ServerProcess) -> None:
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    ready = httpx.get(f"{server.base_url}/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


def test_metrics_expose_refinery_and_vllm_series(server: ServerProcess, client: OpenAI) -> None:
    client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    list(client.completions.create(model="smollm2", prompt="hi", max_tokens=2, stream=True))
    names = {name for name, _ in scrape(server.base_url)}
    for expected in (
        "refinery_requests_total",
        "refinery_request_duration_seconds_bucket",
        "refinery_time_to_first_token_seconds_bucket",
        "vllm:num_requests_running",
        "vllm:prompt_tokens_total",
        "vllm:prefix_cache_hits_total",
    ):
        assert expected in names, expected
    assert metric_value(server.base_url, "refinery_requests_total",
                        endpoint="/v1/chat/completions", status="200") >= 1
    assert metric_value(server.base_url, "refinery_time_to_first_token_seconds_count",
                        endpoint="/v1/completions") >= 1


def test_error_statuses_are_counted(server: ServerProcess) -> None:
    labels = {"endpoint": "/v1/chat/completions", "status": "404"}
    before = metric_value(server.base_url, "refinery_requests_total", **labels)
    httpx.post(f"{server.base_url}/v1/chat/completions",
               json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]})
    assert metric_value(server.base_url, "refinery_requests_total", **labels) == before + 1


def test_request_id_is_echoed_or_generated(server: ServerProcess) -> None:
    body = {"model": "smollm2", "prompt": "hi", "max_tokens": 1}
    echoed = httpx.post(f"{server.base_url}/v1/completions", json=body,
                        headers={"X-Request-Id": "trace-abc-123"})
    assert echoed.headers["x-request-id"] == "trace-abc-123"
    generated = httpx.post(f"{server.base_url}/v1/completions", json=body)
    assert len(generated.headers["x-request-id"]) >= 16
    assert "trace-abc-123" in server.log_path.read_text()


def _assert_engine_idle(server: ServerProcess) -> None:
    assert wait_for_metric(server.base_url, RUNNING, 0, timeout=10) == 0


def test_streaming_disconnect_aborts_the_engine_request(server: ServerProcess) -> None:
    _assert_engine_idle(server)
    with httpx.Client(base_url=server.base_url, timeout=60) as http, http.stream(
        "POST", "/v1/completions", json={**ENDLESS, "stream": True}
    ) as response:
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]
        assert any(line.startswith("data:") for line in received)
        assert metric_value(server.base_url, RUNNING) == 1
    # The client is gone; the engine request must stop long before its 4000 tokens.
    _assert_engine_idle(server)


def test_non_streaming_disconnect_aborts_the_engine_request(server: ServerProcess) -> None:
    _assert_engine_idle(server)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/v1/completions", json=ENDLESS, timeout=3)
    _assert_engine_idle(server)
