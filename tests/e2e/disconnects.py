"""A client that gives up on a long strategy request, and what the server must do about it."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import httpx

from tests.e2e.prometheus import wait_for_metric

__all__ = ["assert_a_disconnect_aborts_every_sub_request"]


def assert_a_disconnect_aborts_every_sub_request(base_url: str, body: dict[str, Any],
                                                 in_flight: int) -> None:
    """Send `body` (a strategy request far longer than 4 s), wait until `in_flight` of its
    sub-requests run, let the client time out and close the connection, then require every
    sub-request and every engine request to be gone within 5 s."""
    assert wait_for_metric(base_url, "refinery_subrequests_running", 0, timeout=10) == 0

    def doomed() -> None:
        with contextlib.suppress(httpx.ReadTimeout):
            httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=4)

    worker = threading.Thread(target=doomed)
    worker.start()
    assert wait_for_metric(base_url, "refinery_subrequests_running", in_flight,
                           timeout=10) == in_flight
    worker.join()
    assert wait_for_metric(base_url, "refinery_subrequests_running", 0, timeout=5) == 0
    assert wait_for_metric(base_url, "vllm:num_requests_running", 0, timeout=5) == 0
