"""Faults, end to end: the engine core killed under load.

The engine core is vLLM's child process; SIGKILL leaves nothing to recover. Every request in
flight (plain and strategy, JSON and streamed) must fail fast with an OpenAI-shaped 503 (a
streamed one, whose 200 is already sent, with an SSE error event), /ready must turn 503, and
the server must exit non-zero on its own so that Kubernetes restarts it. No timing threshold:
the waits below are hang guards; the times are printed for docs/reliability.md.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.e2e.prometheus import metric_value
from tests.servers import ServerProcess, start_refinery

HANG_GUARD_S = 120.0
USER = [{"role": "user", "content": "Tell me a long story about a lighthouse."}]
# Long enough to be still running when the engine dies (~55 tok/s per stream on 2 cores).
LONG = {"max_tokens": 3000, "ignore_eos": True, "temperature": 0.8}
STRATEGY = {"name": "best_of_n", "n": 3}


def _engine_cores(server: ServerProcess) -> list[psutil.Process]:
    children = psutil.Process(server.pid).children(recursive=True)
    return [p for p in children if "EngineCore" in " ".join(p.cmdline()) + p.name()]


def _sse_data(text: str) -> list[Any]:
    events = []
    for event in text.split("\n\n"):
        event = event.strip()
        if event.startswith("data:") and event != "data: [DONE]":
            events.append(json.loads(event.removeprefix("data:").strip()))
    return events


def _assert_openai_503(body: Any) -> None:
    assert list(body) == ["error"], body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == "service_unavailable_error", error


class Load:
    """Requests sent from threads; each outcome (status and body, or the transport error) is
    kept by name, with the time it came back."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.outcomes: dict[str, tuple[float, int | None, str]] = {}
        self.threads: list[threading.Thread] = []

    def send(self, name: str, path: str, body: dict[str, Any]) -> None:
        def run() -> None:
            try:
                response = httpx.post(f"{self.base_url}{path}", json=body, timeout=HANG_GUARD_S)
                self.outcomes[name] = (time.monotonic(), response.status_code, response.text)
            except httpx.HTTPError as exc:
                self.outcomes[name] = (time.monotonic(), None, repr(exc))

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(HANG_GUARD_S)
            assert not thread.is_alive(), f"{thread.name} still waiting: a hang"


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class ReadinessProbe:
    """GET /ready in a loop from a thread, as Kubernetes does (more often): when each probe
    was sent and its status, or None once the server no longer accepts connections."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.seen: list[tuple[float, int | None]] = []
        self._thread = threading.Thread(target=self._run, name="readiness", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=5) as http:
            while True:
                sent = time.monotonic()
                try:
                    status: int | None = http.get(f"{self.base_url}/ready").status_code
                except httpx.TransportError:
                    status = None
                self.seen.append((sent, status))
                if status is None:
                    return
                time.sleep(0.02)

    def join(self) -> None:
        self._thread.join(HANG_GUARD_S)
        assert not self._thread.is_alive(), "the server still answers /ready"


def test_engine_core_killed_under_load_fails_in_flight_requests_with_503_and_exits_non_zero(
    cache_dir: Path, logs_dir: Path
) -> None:
    server = start_refinery(logs_dir, env={"REFINERY_CACHE": str(cache_dir)}, name="engine-kill")
    try:
        server.wait_ready()
        chat = {"model": "smollm2", "messages": USER, **LONG}
        completion = {"model": "smollm2", "prompt": "Once upon a time", **LONG}
        load = Load(server.base_url)
        load.send("plain chat", "/v1/chat/completions", chat)
        load.send("plain completion", "/v1/completions", completion)
        load.send("plain stream", "/v1/completions", {**completion, "stream": True})
        load.send("strategy", "/v1/chat/completions", {**chat, "strategy": STRATEGY})
        load.send("strategy stream", "/v1/chat/completions",
                  {**chat, "strategy": STRATEGY, "stream": True})
        # 3 plain + 2 x 3 samples
        _wait_until(lambda: metric_value(server.base_url, "vllm:num_requests_running") >= 9,
                    60, "the load to run")
        assert not load.outcomes, load.outcomes

        probe = ReadinessProbe(server.base_url)
        cores = _engine_cores(server)
        assert cores, "no EngineCore process"
        for core in cores:
            core.kill()
        killed = time.monotonic()
        load.join()
        exit_code = server.process.wait(HANG_GUARD_S)
        exited_after = time.monotonic() - killed
        probe.join()

        failed_after = {name: round(at - killed, 2) for name, (at, _, _) in load.outcomes.items()}
        first_failure = min(at for at, _, _ in load.outcomes.values())
        after_kill = [status for at, status in probe.seen if at > killed]
        not_ready_after = next(
            (round(at - killed, 2) for at, status in probe.seen if at > killed and status != 200),
            None)
        print(f"\nengine killed: /ready not 200 after {not_ready_after} s "
              f"(statuses {sorted(set(after_kill), key=str)}); requests failed after "
              f"{failed_after} s; exit {exit_code} after {exited_after:.2f} s")
        # Once a request has seen the engine dead, /ready says so until the port closes:
        # 503, then no connection, never 200 again.
        once_failed = [status for at, status in probe.seen if at > first_failure]
        assert set(once_failed) <= {503, None}, once_failed
        assert once_failed == sorted(once_failed, key=lambda s: s is None), once_failed
        for name in ("plain chat", "plain completion", "strategy"):
            _, status, text = load.outcomes[name]
            assert status == 503, (name, status, text)
            _assert_openai_503(json.loads(text))
        for name in ("plain stream", "strategy stream"):
            _, status, text = load.outcomes[name]
            assert status == 200, (name, status, text)
            assert text.rstrip().endswith("data: [DONE]"), (name, text[-500:])
            errors = [event for event in _sse_data(text) if "error" in event]
            assert len(errors) == 1, (name, text[-1000:])
            _assert_openai_503(errors[0])
        assert exit_code != 0
    finally:
        server.kill_group()
