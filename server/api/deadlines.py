"""The wall-clock limit of a generation request (REFINERY_REQUEST_TIMEOUT).

A request's deadline is fixed when it arrives. Past it, its work is cancelled, which aborts
every engine request it started (cancelling the task that iterates `AsyncLLM.generate()` aborts
the request; a strategy's own `finally` aborts its outstanding samples), and the client is told
so: a 504 (`RequestTimeout`) while nothing was sent, else an SSE error event, since a started
stream cannot change its status.

Timing is decided here, by whether the work finished in time, never by the exception the work
raised: vLLM's non-streaming serving code catches the cancellation and returns an error
response of its own ("Client disconnected"), which must not reach the client as the answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import TypeVar, cast

from server.api.error_responses import classify
from server.exceptions import RequestTimeout

__all__ = ["Deadline", "run_before", "stream_before"]

T = TypeVar("T")

# What the pump of `stream_before` hands over besides events.
_ENDED = object()
_TIMED_OUT = object()


class Deadline:
    """When a request must be done, on the event loop's clock."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.at = asyncio.get_running_loop().time() + timeout_s

    def remaining(self) -> float:
        return max(0.0, self.at - asyncio.get_running_loop().time())

    def expired(self) -> RequestTimeout:
        """The error a request past this deadline gets."""
        return RequestTimeout(self.timeout_s)


async def _cancel(task: asyncio.Future[T]) -> None:
    if not task.done():
        task.cancel()
        # Let the cancellation run its course (aborting engine requests) before answering.
        await asyncio.gather(task, return_exceptions=True)


async def run_before(deadline: Deadline, work: Awaitable[T]) -> T:
    """Await `work`; if the deadline passes first, cancel it (and wait for that to finish)
    and raise RequestTimeout."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.wait({task}, timeout=deadline.remaining())
    finally:
        in_time = task.done()
        await _cancel(task)
    if not in_time:
        raise deadline.expired()
    return task.result()


async def stream_before(
    deadline: Deadline, stream: AsyncIterator[str]
) -> AsyncGenerator[str, None]:
    """The events of `stream` until it ends or the deadline passes; then the stream is
    cancelled (its engine request aborted) and the client gets the timeout as an SSE error
    event and `[DONE]`.

    `stream` is read by a pump task and handed over one event at a time, and one timer cancels
    the pump at the deadline: a few microseconds per event, where a timed wait per event (a task
    and a timer each) cost ten times that on the token path of plain streams."""
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=1)
    timed_out = False

    async def pump() -> None:
        try:
            async for event in stream:
                await queue.put(event)
        except asyncio.CancelledError:
            if not timed_out:
                raise
            await queue.put(_TIMED_OUT)
            return
        except Exception as exc:  # noqa: BLE001  re-raised by the reader
            await queue.put(exc)
            return
        await queue.put(_ENDED)

    def expire() -> None:
        nonlocal timed_out
        if not reader.done():
            timed_out = True
            reader.cancel()

    reader = asyncio.create_task(pump())
    timer = asyncio.get_running_loop().call_at(deadline.at, expire)
    try:
        while True:
            event = await queue.get()
            if event is _ENDED:
                return
            if event is _TIMED_OUT:
                yield classify(deadline.expired()).sse_event()
                yield "data: [DONE]\n\n"
                return
            if isinstance(event, Exception):
                raise event
            yield cast(str, event)
    finally:
        timer.cancel()
        await _cancel(reader)
