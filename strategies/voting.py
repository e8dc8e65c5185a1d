"""Choosing among samples: majority vote, certainty-ranked Borda vote, and argmax selections.

Votes are over answer *groups* (equivalent answers share a group id, see strategies.answers);
the returned sample is the most certain sample of the winning group, so the text the client gets
is the best-supported writing of the winning answer — or, when the samples carry no certainty
(a strategy that asked for none), the earliest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from strategies.base import Sample

__all__ = [
    "Vote",
    "argmax_sample",
    "borda_vote",
    "borda_weights",
    "hierarchical_vote",
    "majority_vote",
    "tally_groups",
    "weighted_vote",
]


@dataclass(frozen=True)
class Vote:
    winner: int  # index into the samples list of the sample to return
    group: int | None  # winning answer group (None: no extractable answer, argmax fallback)
    tally: dict[int, float]  # group → count or weight


def _certainty_key(sample: Sample) -> tuple[float, int]:
    """Higher certainty first; unknown certainty ranks last; ties → the earlier sample."""
    certainty = sample.certainty if sample.certainty is not None else float("-inf")
    return (certainty, -sample.index)


def argmax_sample(samples: Sequence[Sample], key: Callable[[Sample], float | None]) -> int:
    """Index of the sample with the highest `key` (None ranks last; ties → earlier sample)."""

    def rank(i: int) -> tuple[float, int]:
        value = key(samples[i])
        return (value if value is not None else float("-inf"), -i)

    return max(range(len(samples)), key=rank)


def _best_in_group(samples: Sequence[Sample], groups: Sequence[int | None], group: int) -> int:
    """The sample a vote returns for its winning answer: the most certain one that finished
    (`finish_reason` "stop"), so a text cut at max_tokens or terminated by a watcher is returned
    only when no sample of that answer finished."""
    members = [i for i, g in enumerate(groups) if g == group]
    return max(members, key=lambda i: (samples[i].finish_reason == "stop",
                                       _certainty_key(samples[i])))


def _decide(
    samples: Sequence[Sample], groups: Sequence[int | None], tally: dict[int, float]
) -> Vote:
    if not tally:
        return Vote(argmax_sample(samples, lambda s: s.certainty), None, {})

    def strength(group: int) -> tuple[float, tuple[float, int]]:
        # Ties between groups go to the one whose best sample is more certain (or earlier).
        return (tally[group], _certainty_key(samples[_best_in_group(samples, groups, group)]))

    group = max(tally, key=strength)
    return Vote(_best_in_group(samples, groups, group), group, tally)


def majority_vote(samples: Sequence[Sample], groups: Sequence[int | None]) -> Vote:
    """Self-consistency (Wang et al. 2023): the most frequent answer wins."""
    tally: dict[int, float] = {}
    for group in groups:
        if group is not None:
            tally[group] = tally.get(group, 0) + 1
    return _decide(samples, groups, tally)


def borda_weights(samples: Sequence[Sample], power: float) -> list[float]:
    """Each sample's Borda weight (N − r + 1)^p, r its certainty rank (1 = most certain)."""
    order = sorted(range(len(samples)), key=lambda i: _certainty_key(samples[i]), reverse=True)
    n = len(samples)
    weights = [0.0] * n
    for rank, i in enumerate(order, start=1):
        weights[i] = float((n - rank + 1) ** power)
    return weights


def borda_vote(samples: Sequence[Sample], groups: Sequence[int | None], power: float) -> Vote:
    """Borda voting ranked by self-certainty (Kang et al. 2025, §4.2): the sample of rank r
    (r = 1 most certain) gives its answer (N − r + 1)^p; the largest total wins. p = `borda_p`
    (0.5 in the authors' code) moves between majority vote (p = 0) and argmax (p → ∞)."""
    return weighted_vote(samples, groups, borda_weights(samples, power))


def tally_groups(
    groups: Sequence[int | None], weights: Sequence[float] | None = None
) -> dict[int, float]:
    """Group → summed weight (a count with no weights); samples without a group are left out."""
    tally: dict[int, float] = {}
    for i, group in enumerate(groups):
        if group is not None:
            tally[group] = tally.get(group, 0) + (1 if weights is None else weights[i])
    return tally


def hierarchical_vote(
    samples: Sequence[Sample], outer: Sequence[int | None], inner: Sequence[int | None],
    weights: Sequence[float] | None = None,
) -> Vote:
    """Two-stage vote (its_hub's hierarchical tool vote): the `outer` group (e.g. which tool)
    wins by weight among all samples, then the `inner` group (e.g. tool and arguments) among
    the samples of the winning outer group only. The returned tally is the second stage's."""
    outer_tally = tally_groups(outer, weights)
    if not outer_tally:
        return _decide(samples, inner, tally_groups(inner, weights))
    first = _decide(samples, outer, outer_tally)
    within = [g if outer[i] == first.group else None for i, g in enumerate(inner)]
    second = tally_groups(within, weights)
    if not second:
        return Vote(first.winner, None, {})
    return _decide(samples, within, second)


def weighted_vote(
    samples: Sequence[Sample], groups: Sequence[int | None], weights: Sequence[float]
) -> Vote:
    """Each sample gives its answer its own weight; the largest total wins (ties → the answer
    whose best sample is more certain). Majority vote is the case of equal weights."""
    tally: dict[int, float] = {}
    for group, weight in zip(groups, weights, strict=True):
        if group is not None:
            tally[group] = tally.get(group, 0.0) + weight
    return _decide(samples, groups, tally)
