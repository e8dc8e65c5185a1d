"""Runs the app under uvicorn with Refinery's SIGTERM drain (README.md, "Operations").

uvicorn on SIGTERM closes its listening socket at once, so new requests would see connection
errors rather than a 503, and Kubernetes could still route to the pod. Instead the first SIGTERM
only starts a drain (readiness false, new API requests 503, in-flight requests run on up to the
drain timeout); the server exits when the drain ends. A second signal falls back to uvicorn's
own handling (a second Ctrl-C forces exit).
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

import uvicorn

from server.lifecycle import Lifecycle, Phase

__all__ = ["DrainingServer"]

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self.lifecycle.phase is not Phase.DRAINING:
            logger.info(
                "SIGTERM: draining %d in-flight request(s) for up to %.0f s",
                self.lifecycle.in_flight,
                self.lifecycle.drain_timeout,
            )
            self.lifecycle.begin_drain()
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.lifecycle.should_stop():
            return True
        return await super().on_tick(counter)
