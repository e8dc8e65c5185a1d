"""Admission control: a server-wide bound on the engine sequences that admitted requests hold.

vLLM queues whatever it is sent, and one strategy request can send 64 sub-requests: without a
bound, a handful of strategy requests fill the queue for minutes and every later request waits
behind them. So every generation request takes its sequences before any work starts, and
gives them back when its response has ended (sent, failed, cancelled, or its client gone):

- a plain request takes `n` per prompt (a batch of completion prompts takes n × prompts);
- a strategy request takes its whole sample budget (`StrategyOptions.sample_budget()`), all or
  nothing, so an admitted request never starves half-way.

Over the bound a request is refused at once with a 429 and `Retry-After` (`Overloaded`), never
queued: the client retries (the openai SDK does so by itself) or goes to another replica.
A full server refuses before the request is even parsed (`refuse_when_full`), so refusals stay
cheap when they are most of the traffic.

Large requests keep a way in: when a request of k > 1 sequences is refused, k sequences stay
reserved for two Retry-After periods, and smaller requests are admitted only below the bound
minus k. The capacity freed meanwhile accumulates until a request of k fits, so under sustained
overload 8-sample strategy requests still get in between plain ones; without it nearly every
freed sequence went to the next 1-sequence request. It is not a fair share (docs/reliability.md,
"Load").
A request that asks for more sequences than the bound itself could never be admitted: that is
a 400 (`over_cap`), since retrying would not help.

The default bound is the engine's batch size, `max_num_seqs` × data-parallel ranks, times a
queue factor (REFINERY_QUEUE_FACTOR, 2): a full batch running and one waiting. It is known once
the engine has loaded (`configure`); REFINERY_MAX_OUTSTANDING_SEQUENCES sets it outright.

Everything runs on the server's one event loop, so counting needs no lock: `try_acquire`
checks and takes in one step with no `await` between them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from server.exceptions import InvalidRequest, Overloaded
from server.metrics import ADMISSION_REJECTED, OUTSTANDING_SEQUENCES, OUTSTANDING_SEQUENCES_LIMIT

__all__ = [
    "RETRY_AFTER_S",
    "AdmissionControl",
    "EngineLimits",
    "Lease",
    "engine_limits",
    "release_when_sent",
]

# What a refused client is told to wait. Sequences free up as requests finish, which on a busy
# engine happens every few hundred milliseconds; one second is the smallest Retry-After (whole
# seconds) and what the openai SDK then waits before its retry.
RETRY_AFTER_S = 1
# How long a refused large request's size stays reserved: a client that honours Retry-After is
# back well within two periods; one that went away stops holding anything back after this.
RESERVATION_S = 2.0 * RETRY_AFTER_S


@dataclass(frozen=True)
class EngineLimits:
    """What the loaded engine can hold: sequences per step and tokens per sequence."""

    max_num_seqs: int  # over all data-parallel ranks
    max_model_len: int


def engine_limits(vllm_config: Any) -> EngineLimits:
    """The limits of an engine from its `VllmConfig` (`AsyncLLM.vllm_config`)."""
    ranks = max(1, int(getattr(vllm_config.parallel_config, "data_parallel_size", 1) or 1))
    return EngineLimits(
        max_num_seqs=int(vllm_config.scheduler_config.max_num_seqs) * ranks,
        max_model_len=int(vllm_config.model_config.max_model_len),
    )


class Lease:
    """The sequences one request holds; `release` gives them back once, however often called."""

    def __init__(self, control: AdmissionControl, slots: int) -> None:
        self._control = control
        self.slots = slots
        self._held = True

    @property
    def held(self) -> bool:
        return self._held

    def release(self) -> None:
        if self._held:
            self._held = False
            self._control.release(self.slots)


class AdmissionControl:
    """The bound and the count of one server (held on `app.state.admission`)."""

    def __init__(self, *, bound: int | None, queue_factor: float) -> None:
        """`bound`: REFINERY_MAX_OUTSTANDING_SEQUENCES, or None to derive it from the engine's
        limits (`configure`) as max_num_seqs × `queue_factor`. Until then nothing is bounded:
        no request is served before the engine has loaded."""
        self._explicit = bound
        self.queue_factor = queue_factor
        self.capacity: int | None = bound
        self.limits: EngineLimits | None = None
        self.outstanding = 0
        # The largest recently refused request (sequences), and until when it is reserved.
        self._reserved = 0
        self._reserved_until = 0.0
        if bound is not None:
            OUTSTANDING_SEQUENCES_LIMIT.set(bound)

    def configure(self, limits: EngineLimits) -> None:
        """The engine has loaded: keep its limits, and derive the bound unless one was set."""
        self.limits = limits
        if self._explicit is None:
            self.capacity = max(1, math.ceil(limits.max_num_seqs * self.queue_factor))
        OUTSTANDING_SEQUENCES_LIMIT.set(self.capacity or 0)

    def reserved(self, now: float | None = None) -> int:
        """Sequences held back for a recently refused larger request (0: none)."""
        now = time.monotonic() if now is None else now
        return self._reserved if now < self._reserved_until else 0

    def try_acquire(self, slots: int, now: float | None = None) -> bool:
        """Take `slots` sequences if they fit; False (nothing taken) if not. They fit under the
        bound, minus the reservation when a larger request was refused recently; a refused
        request of more than one sequence becomes (or renews) the reservation."""
        if self.capacity is None:
            self.outstanding += slots
            OUTSTANDING_SEQUENCES.inc(slots)
            return True
        now = time.monotonic() if now is None else now
        reserved = self.reserved(now)
        room = self.capacity - self.outstanding - (reserved if slots < reserved else 0)
        if slots > room:
            if slots > 1:
                self._reserved = max(reserved, slots)
                self._reserved_until = now + RESERVATION_S
            return False
        if slots >= reserved:
            self._reserved = 0  # the reservation was for a request of this size: served
        self.outstanding += slots
        OUTSTANDING_SEQUENCES.inc(slots)
        return True

    def release(self, slots: int) -> None:
        self.outstanding -= slots
        OUTSTANDING_SEQUENCES.dec(slots)

    def refuse_when_full(self) -> None:
        """Raise the 429 now if no request at all could be admitted (every sequence held), so
        that a refusal on a full server costs no parsing; the exact check is `admit`'s."""
        if self.capacity is not None and self.outstanding >= self.capacity:
            ADMISSION_REJECTED.labels("overloaded").inc()
            raise self._overloaded(1)

    def _overloaded(self, slots: int) -> Overloaded:
        return Overloaded(
            f"the server is at capacity ({self.outstanding} of {self.capacity} engine "
            f"sequences held; this request needs {slots}): retry after {RETRY_AFTER_S} s",
            retry_after_s=RETRY_AFTER_S,
        )

    def admit(self, slots: int, *, param: str) -> Lease:
        """A lease on `slots` sequences, or the refusal: 400 when even an idle server could not
        hold them (`param` names the field that asked), 429 when it cannot now."""
        if self.capacity is not None and slots > self.capacity:
            ADMISSION_REJECTED.labels("over_cap").inc()
            raise InvalidRequest(
                f"{param}: this request needs {slots} engine sequences at once, more than this "
                f"server ever admits ({self.capacity})",
                param=param, code="over_server_cap",
            )
        if not self.try_acquire(slots):
            ADMISSION_REJECTED.labels("overloaded").inc()
            raise self._overloaded(slots)
        return Lease(self, slots)


class _ReleasingResponse(Response):
    """`response`, sent as it is; the lease is released when sending ends however it ends, and a
    streamed body is closed first, so that the work it drives is stopped before its sequences
    count as free (Starlette does not close a body iterator its client abandoned)."""

    def __init__(self, response: Response, lease: Lease) -> None:
        self._response = response
        self._lease = lease
        self.status_code = response.status_code
        self.background = None
        self.raw_headers = response.raw_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._response(scope, receive, send)
        finally:
            try:
                body = getattr(self._response, "body_iterator", None)
                close = getattr(body, "aclose", None)
                if close is not None:
                    await close()
            finally:
                self._lease.release()


def release_when_sent(response: Response, lease: Lease) -> Response:
    """Hold `lease` for as long as `response` is being sent (a stream's whole life)."""
    return _ReleasingResponse(response, lease)
