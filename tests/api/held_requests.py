"""Requests held open in process: driven as a server drives the app, with a client that stays
connected until the test lets it go (httpx's ASGITransport only disconnects after the response),
so that a test can fill the admission bound and see what the next request gets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from starlette.types import Message

__all__ = ["HeldRequest", "hold", "wait_until"]


@dataclass
class HeldRequest:
    """A request under way: `leave()` disconnects its client; `task` ends when the app is done
    with it; `sent` is what the app sent so far."""

    task: asyncio.Task[None]
    gone: asyncio.Event
    sent: list[Message] = field(default_factory=list)

    def leave(self) -> None:
        self.gone.set()

    @property
    def status(self) -> int | None:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        return starts[0]["status"] if starts else None

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")

    async def finished(self, timeout: float = 5.0) -> None:
        await asyncio.wait_for(asyncio.shield(self.task), timeout)


def hold(app: FastAPI, path: str, body: dict[str, Any] | bytes,
         headers: Sequence[tuple[bytes, bytes]] = ()) -> HeldRequest:
    """Start POST `path` with `body`; its client stays until `leave()`."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    gone = asyncio.Event()
    sent: list[Message] = []
    body_read = False

    async def receive() -> Message:
        nonlocal body_read
        if not body_read:
            body_read = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 50000), "server": ("test", 80),
    }
    task = asyncio.create_task(app(scope, receive, send))
    return HeldRequest(task, gone, sent)


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `condition` (the app runs meanwhile) until it holds; fail after `timeout`."""
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), timeout)
