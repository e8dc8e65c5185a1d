"""The drain rule: ready → draining stops new work; exit once idle or the deadline passes."""

from __future__ import annotations

import time

from server.lifecycle import Lifecycle, Phase


def test_starting_then_ready() -> None:
    life = Lifecycle(drain_timeout=10)
    assert not life.accepting and not life.should_stop()
    life.mark_ready()
    assert life.accepting and life.phase is Phase.READY


def test_drain_waits_for_in_flight_requests() -> None:
    life = Lifecycle(drain_timeout=10)
    life.mark_ready()
    life.in_flight = 2
    life.begin_drain()
    assert not life.accepting
    assert not life.should_stop()
    life.in_flight = 0
    assert life.should_stop()


def test_drain_gives_up_at_the_deadline() -> None:
    life = Lifecycle(drain_timeout=0.05)
    life.mark_ready()
    life.in_flight = 1
    life.begin_drain()
    assert not life.should_stop()
    time.sleep(0.06)
    assert life.should_stop()


def test_ready_never_returns_after_a_drain_began() -> None:
    life = Lifecycle(drain_timeout=10)
    life.begin_drain()  # SIGTERM while the engine is still loading
    life.mark_ready()
    assert life.phase is Phase.DRAINING and not life.accepting


def test_failure_stops_the_server() -> None:
    life = Lifecycle(drain_timeout=10)
    error = RuntimeError("boom")
    life.mark_failed(error)
    assert life.should_stop() and life.failure is error
