"""Tie request work to the client connection: when the client goes away, the work is cancelled
(and with it every engine request it started: cancelling the task that iterates
`AsyncLLM.generate()` aborts the engine request; docs/architecture.md, "Cancelling")."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

from server.exceptions import ClientDisconnected

__all__ = ["cancel_on_disconnect"]

T = TypeVar("T")


async def _wait_for_disconnect(request: Request) -> None:
    # The body has already been read by the route, so every further message is either
    # an empty body chunk or the disconnect we are waiting for.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`; if the client disconnects first, cancel it and raise ClientDisconnected."""
    work_task = asyncio.ensure_future(work)
    watcher = asyncio.create_task(_wait_for_disconnect(request))
    try:
        await asyncio.wait({work_task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not work_task.done():
            work_task.cancel()
            # Let the cancellation run its course (aborting engine requests) before answering.
            await asyncio.gather(work_task, return_exceptions=True)
    if work_task.cancelled():
        raise ClientDisconnected
    return work_task.result()
