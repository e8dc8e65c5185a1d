"""The server's life: starting → ready → draining → stopped, and the in-flight request count.

One `Lifecycle` per app (on `app.state`). The drain rule (README.md, "Operations"): on SIGTERM,
readiness turns false at once and new API requests are refused with 503, while requests already
running finish, up to `drain_timeout` seconds; then the process shuts the engine down.
"""

from __future__ import annotations

import enum
import time

__all__ = ["Lifecycle", "Phase"]


class Phase(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


class Lifecycle:
    def __init__(self, drain_timeout: float) -> None:
        self.drain_timeout = drain_timeout
        self.phase = Phase.STARTING
        self.failure: BaseException | None = None
        self.in_flight = 0
        self._drain_deadline: float | None = None

    @property
    def accepting(self) -> bool:
        """True while new API requests may start."""
        return self.phase is Phase.READY

    def mark_ready(self) -> None:
        if self.phase is Phase.STARTING:
            self.phase = Phase.READY

    def mark_failed(self, error: BaseException) -> None:
        self.failure = error
        self.phase = Phase.FAILED

    def begin_drain(self) -> None:
        """Stop accepting work. Safe to call from a signal handler: it only sets fields."""
        if self.phase is not Phase.DRAINING:
            self.phase = Phase.DRAINING
            self._drain_deadline = time.monotonic() + self.drain_timeout

    def should_stop(self) -> bool:
        """True once the process should exit: start-up failed, or a drain is finished."""
        if self.phase is Phase.FAILED:
            return True
        if self.phase is not Phase.DRAINING or self._drain_deadline is None:
            return False
        return self.in_flight == 0 or time.monotonic() >= self._drain_deadline
