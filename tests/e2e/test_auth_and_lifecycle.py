"""API keys, start-up readiness, SIGTERM drain, and start-up failure, each on its own server."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.e2e.prometheus import wait_for_metric
from tests.servers import ServerProcess, running, start_refinery

USER = [{"role": "user", "content": "hi"}]


def _group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def keyed_server(cache_dir: Path, logs_dir: Path) -> Iterator[ServerProcess]:
    """Keys from the environment AND a flag: the flag must win (settings precedence)."""
    server = start_refinery(
        logs_dir, "--api-key", "flag-key", "--served-model-name", "tiny",
        env={"REFINERY_CACHE": str(cache_dir), "REFINERY_API_KEYS": "env-key-1,env-key-2",
             "REFINERY_SERVED_MODEL_NAME": "from-env", "REFINERY_MAX_SAMPLES": "8"},
        name="keyed",
    )
    with running(server) as live:
        yield live


def test_health_answers_before_ready_while_the_engine_loads(keyed_server: ServerProcess) -> None:
    assert (200, 503) in keyed_server.observed, keyed_server.observed


def test_api_key_required_when_configured(keyed_server: ServerProcess) -> None:
    base = f"{keyed_server.base_url}/v1"
    good = OpenAI(base_url=base, api_key="flag-key", max_retries=0)
    assert [m.id for m in good.models.list().data if "+" not in m.id] == ["tiny"]
    reply = good.chat.completions.create(model="tiny", messages=USER, max_tokens=2)
    assert reply.choices[0].message.content is not None
    for wrong in ("env-key-1", "flag-key-but-longer", "nope"):
        with pytest.raises(openai.AuthenticationError) as err:
            OpenAI(base_url=base, api_key=wrong, max_retries=0).models.list()
        assert err.value.status_code == 401
    missing = httpx.post(f"{base}/chat/completions", json={"model": "tiny", "messages": USER})
    assert missing.status_code == 401
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    assert missing.json()["error"]["type"] == "authentication_error"


def test_server_cap_on_samples(keyed_server: ServerProcess) -> None:
    client = OpenAI(base_url=f"{keyed_server.base_url}/v1", api_key="flag-key", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="tiny", messages=USER, temperature=0.7, max_tokens=2,
            extra_body={"strategy": {"name": "best_of_n", "n": 9}},
        )
    assert err.value.body["param"] == "strategy.n"
    assert "cap of 8" in err.value.body["message"]
    reply = client.chat.completions.create(
        model="tiny+bon8", messages=USER, temperature=0.7, max_tokens=2
    )
    assert reply.model_extra["strategy"]["samples"] == 8


def test_probes_and_metrics_need_no_key(keyed_server: ServerProcess) -> None:
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(f"{keyed_server.base_url}{path}").status_code == 200


def test_no_key_needed_when_none_configured(client: OpenAI) -> None:
    assert client.models.list().data


def test_sigterm_drains_in_flight_work_then_exits_cleanly(cache_dir: Path, logs_dir: Path) -> None:
    server = start_refinery(logs_dir, "--drain-timeout", "120",
                            env={"REFINERY_CACHE": str(cache_dir)}, name="drain")
    try:
        server.wait_ready()
        result: dict[str, object] = {}

        def in_flight() -> None:
            try:
                result["reply"] = httpx.post(
                    f"{server.base_url}/v1/completions", timeout=120,
                    json={"model": "smollm2", "prompt": "Once upon a time", "max_tokens": 150,
                          "ignore_eos": True},
                )
            except httpx.HTTPError as exc:  # recorded, asserted below
                result["error"] = exc

        # And 16 strategy requests of 2 samples each: a drain must let every one finish.
        strategy_replies: list[httpx.Response | httpx.HTTPError] = []

        def strategy_in_flight(index: int) -> None:
            try:
                strategy_replies.append(httpx.post(
                    f"{server.base_url}/v1/chat/completions", timeout=120,
                    json={"model": "smollm2", "max_tokens": 60, "ignore_eos": True,
                          "temperature": 0.7, "strategy": {"name": "best_of_n", "n": 2},
                          "messages": [{"role": "user", "content": f"Count to {index}."}]},
                ))
            except httpx.HTTPError as exc:  # recorded, asserted below
                strategy_replies.append(exc)

        worker = threading.Thread(target=in_flight)
        strategy_workers = [threading.Thread(target=strategy_in_flight, args=(i,))
                            for i in range(16)]
        for thread in (worker, *strategy_workers):
            thread.start()
        running = 1 + 16 * 2
        assert wait_for_metric(server.base_url, "vllm:num_requests_running", running,
                               timeout=60) == running
        server.process.terminate()  # SIGTERM to the main process only

        refused = None
        for _ in range(50):
            ready = httpx.get(f"{server.base_url}/ready")
            if ready.status_code == 503:
                refused = httpx.post(f"{server.base_url}/v1/completions",
                                     json={"model": "smollm2", "prompt": "hi", "max_tokens": 1})
                break
            time.sleep(0.05)
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        assert refused is not None and refused.status_code == 503
        assert refused.json()["error"]["type"] == "service_unavailable_error"
        refused_strategy = httpx.post(
            f"{server.base_url}/v1/chat/completions",
            json={"model": "smollm2", "messages": USER, "max_tokens": 1, "strategy": "bon8"})
        assert refused_strategy.status_code == 503, refused_strategy.text

        for thread in strategy_workers:
            thread.join(120)
        assert len(strategy_replies) == 16
        for strategy_reply in strategy_replies:
            assert isinstance(strategy_reply, httpx.Response), strategy_reply
            assert strategy_reply.status_code == 200, strategy_reply.text
            assert strategy_reply.json()["strategy"]["samples"] == 2
        worker.join(120)
        reply = result.get("reply")
        assert isinstance(reply, httpx.Response), result.get("error")
        assert reply.status_code == 200
        assert reply.json()["usage"]["completion_tokens"] == 150
        assert server.process.wait(120) == 0
        assert _group_gone(server.process.pid, timeout=30), "engine processes outlived the server"
    finally:
        server.kill_group()


def test_start_up_failure_exits_non_zero_with_a_clear_message(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", str(missing), "--port", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode != 0
    assert "no-such-model" in done.stdout + done.stderr
