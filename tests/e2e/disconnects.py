"""A client that gives up on a long strategy request, and what the server must do about it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx

from tests.e2e.prometheus import wait_for_metric

__all__ = [
    "abandoned_request",
    "assert_a_disconnect_aborts_every_sub_request",
    "assert_a_disconnect_storm_leaks_nothing",
]


@contextlib.contextmanager
def abandoned_request(base_url: str, body: dict[str, Any]) -> Iterator[None]:
    """POST `body` to the chat endpoint on a raw connection that the block's end closes, as a
    client that gives up closes it. The test decides when the client leaves: a client timeout
    could fire before a slow machine got the request running (CI saw exactly that)."""
    url = httpx.URL(base_url)
    assert url.host and url.port
    payload = json.dumps(body).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
    with socket.create_connection((url.host, url.port), timeout=10) as connection:
        connection.sendall(head.encode() + payload)
        yield


def assert_a_disconnect_aborts_every_sub_request(base_url: str, body: dict[str, Any],
                                                 in_flight: int) -> None:
    """Send `body` (a long strategy request), wait until `in_flight` of its sub-requests run,
    close the connection, then require every sub-request and every engine request to be gone
    within 30 s (a leak stays forever)."""
    assert wait_for_metric(base_url, "refinery_subrequests_running", 0, timeout=10) == 0
    with abandoned_request(base_url, body):
        assert wait_for_metric(base_url, "refinery_subrequests_running", in_flight,
                               timeout=60) == in_flight
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
