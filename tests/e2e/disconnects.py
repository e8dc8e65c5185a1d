"""A client that gives up on a long strategy request, and what the server must do about it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import httpx

from tests.e2e.prometheus import wait_for_metric

__all__ = [
    "assert_a_disconnect_aborts_every_sub_request",
    "assert_a_disconnect_storm_leaks_nothing",
]


def assert_a_disconnect_aborts_every_sub_request(base_url: str, body: dict[str, Any],
                                                 in_flight: int) -> None:
    """Send `body` (a strategy request far longer than 4 s), wait until `in_flight` of its
    sub-requests run, let the client time out and close the connection, then require every
    sub-request and every engine request to be gone within 30 s (a leak stays forever)."""
    assert wait_for_metric(base_url, "refinery_subrequests_running", 0, timeout=10) == 0

    def doomed() -> None:
        with contextlib.suppress(httpx.ReadTimeout):
            httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=4)

    worker = threading.Thread(target=doomed)
    worker.start()
    assert wait_for_metric(base_url, "refinery_subrequests_running", in_flight,
                           timeout=10) == in_flight
    worker.join()
    assert wait_for_metric(base_url, "refinery_subrequests_running", 0, timeout=30) == 0
    assert wait_for_metric(base_url, "vllm:num_requests_running", 0, timeout=30) == 0


def assert_a_disconnect_storm_leaks_nothing(base_url: str, body: dict[str, Any], clients: int,
                                            samples: int) -> None:
    """`clients` clients stream `body` (a long strategy request of `samples` samples) at once;
    once all are admitted and their sub-requests run, every connection is dropped together.
    Then no sub-request and no engine request may be left within 30 s, no sequence may stay
    held, and the server must answer the next request."""
    assert wait_for_metric(base_url, "refinery_subrequests_running", 0, timeout=10) == 0

    async def storm() -> list[int]:
        drop = asyncio.Event()
        statuses: list[int] = []
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as http:
            async def one() -> None:
                async with http.stream("POST", "/v1/chat/completions",
                                       json={**body, "stream": True}) as response:
                    statuses.append(response.status_code)
                    # Kept referenced: a dropped line iterator closes the response (httpx).
                    lines = response.aiter_lines()
                    if response.status_code == 200:
                        await anext(lines)  # admitted: its comment line
                    await drop.wait()  # leaving the block drops the connection mid-stream

            waiting = asyncio.gather(*(one() for _ in range(clients)))
            everyone = clients * samples
            running = await asyncio.to_thread(
                wait_for_metric, base_url, "refinery_subrequests_running", everyone, 120)
            assert running == everyone, (running, statuses)
            drop.set()
            await waiting
        return statuses

    statuses = asyncio.run(storm())
    assert statuses == [200] * clients
    # A leak stays forever; the bounds only wait out the engine step in progress when the
    # connections dropped (seconds with 200 long sequences on a slow 2-core CPU).
    assert wait_for_metric(base_url, "refinery_subrequests_running", 0, timeout=30) == 0
    assert wait_for_metric(base_url, "vllm:num_requests_running", 0, timeout=30) == 0
    assert wait_for_metric(base_url, "refinery_outstanding_sequences", 0, timeout=30) == 0
    served = httpx.post(f"{base_url}/v1/completions", timeout=60,
                        json={"model": body["model"], "prompt": "Say hi:", "max_tokens": 2})
    assert served.status_code == 200, served.text
