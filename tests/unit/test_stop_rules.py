"""Stop rules: ESC's unanimous windows and ASC's Beta criterion, against scipy."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import betainc

from strategies.stop_rules import (
    AdaptiveConsistency,
    EarlyStoppingConsistency,
    FixedSamples,
    probability_leader_is_best,
)


@given(st.integers(0, 60), st.integers(0, 60))
def test_beta_probability_matches_scipy(v1: int, v2: int) -> None:
    expected = 1 - betainc(v1 + 1, v2 + 1, 0.5)
    assert probability_leader_is_best(v1, v2) == pytest.approx(expected, abs=1e-12)


def first_stop(v2: int, confidence: float = 0.95) -> int:
    """Smallest v1 at which ASC stops against a runner-up with v2 votes."""
    rule = AdaptiveConsistency(confidence)
    v1 = v2
    while not rule.settled([0] * v1 + [1] * v2):
        v1 += 1
    return v1


@pytest.mark.parametrize(("v2", "v1"), [(0, 4), (1, 6), (2, 8), (3, 9)])
def test_asc_stop_points_of_the_paper(v2: int, v1: int) -> None:
    assert first_stop(v2) == v1


def test_asc_ignores_unextractable_answers_and_needs_a_leader() -> None:
    rule = AdaptiveConsistency(0.95)
    assert not rule.settled([])
    assert not rule.settled([None] * 10)
    assert not rule.settled([0, 0, 0, None, None])
    assert rule.settled([0, 0, None, 0, 0])
    assert not rule.settled([0, 1, 0, 1, 0, 1, 0, 1])


def test_esc_stops_only_on_a_unanimous_window_boundary() -> None:
    rule = EarlyStoppingConsistency(window=3)
    assert not rule.settled([0, 0])  # mid-window
    assert rule.settled([0, 0, 0])
    assert not rule.settled([0, 0, 1])
    assert not rule.settled([1, 2, 1, 0, 0])  # mid-window again
    assert rule.settled([1, 2, 1, 0, 0, 0])
    assert not rule.settled([None, None, None])  # no answer is not agreement


def test_fixed_never_stops_early() -> None:
    assert not FixedSamples().settled([0] * 64)
