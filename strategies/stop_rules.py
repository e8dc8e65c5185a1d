"""When self-consistency may stop sampling: fixed N, ESC windows, and ASC's Beta criterion.

A rule sees the group ids of the answers drawn so far, in sample order (None = no extractable
answer), and says whether the vote is settled.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from math import comb
from typing import Protocol

__all__ = [
    "AdaptiveConsistency",
    "EarlyStoppingConsistency",
    "FixedSamples",
    "StopRule",
    "probability_leader_is_best",
]


class StopRule(Protocol):
    def settled(self, groups: Sequence[int | None]) -> bool: ...


@dataclass(frozen=True)
class FixedSamples:
    """Plain self-consistency (Wang et al. 2023): always draw every sample."""

    def settled(self, groups: Sequence[int | None]) -> bool:
        return False


@dataclass(frozen=True)
class EarlyStoppingConsistency:
    """ESC (Li et al. 2024, "Escape Sky-high Cost"): sample in windows of `window`; stop at
    the first window whose answers are all the same. A window with an unextractable answer is
    never unanimous."""

    window: int

    def settled(self, groups: Sequence[int | None]) -> bool:
        if not groups or len(groups) % self.window:
            return False
        last = groups[-self.window :]
        return last[0] is not None and all(g == last[0] for g in last)


def probability_leader_is_best(v1: int, v2: int) -> float:
    """P(p1 > p2 | counts v1 ≥ v2) under a uniform prior: 1 − I_{1/2}(v1 + 1, v2 + 1).

    ASC (Aggarwal et al. 2023, "Let's Sample Step by Step", §3) models the two leading answers'
    shares with a Beta posterior. For integer parameters the regularised incomplete Beta at 1/2
    is a binomial tail: I_{1/2}(a, b) = P(Binomial(a + b − 1, 1/2) ≥ a), computed exactly here.
    """
    a, b = v1 + 1, v2 + 1
    n = a + b - 1
    tail = sum(comb(n, j) for j in range(a, n + 1))
    return 1.0 - tail / 2**n


@dataclass(frozen=True)
class AdaptiveConsistency:
    """ASC: after each sample, stop once the leading answer beats the runner-up with posterior
    probability ≥ `confidence` (0.95 in the paper). Stop points for two answers: 4–0, 6–1,
    8–2, 9–3, …"""

    confidence: float

    def settled(self, groups: Sequence[int | None]) -> bool:
        counts = Counter(g for g in groups if g is not None).most_common(2)
        if not counts:
            return False
        v1 = counts[0][1]
        v2 = counts[1][1] if len(counts) > 1 else 0
        return probability_leader_is_best(v1, v2) >= self.confidence
