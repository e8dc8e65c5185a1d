"""Per-strategy numbers of an evaluation: accuracy with a seeded 95% bootstrap interval,
tokens and sub-requests per question, latency percentiles, questions per second, and the
question-by-question comparison with a baseline strategy (exact McNemar test)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Outcome", "StrategySummary", "bootstrap_interval", "mcnemar_exact_p", "percentile",
           "summarise"]


@dataclass(frozen=True)
class Outcome:
    """One question under one strategy, as the client saw it: `reply` is the returned text
    and `detail` the judge's reason where the answer alone does not say it (a failed
    program's output), so a wrong answer can be audited without asking again; `throttled`
    counts the 429s (server at capacity) waited out before the answer, which `latency_s`
    includes; `strategy_report` is the response's `strategy` object (what the strategy did:
    samples drawn, votes, stopped early, a refinement's rounds), None for a plain request or
    an error, so a pass can be broken down by what each question went through."""

    question_id: str
    correct: bool
    answer: str | None
    completion_tokens: int
    prompt_tokens: int
    sub_requests: int
    latency_s: float
    error: str | None = None
    reply: str | None = None
    detail: str | None = None
    throttled: int = 0
    strategy_report: dict[str, Any] | None = None


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile with linear interpolation (numpy's default); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def bootstrap_interval(values: Sequence[float], confidence: float = 0.95,
                       resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (Efron & Tibshirani 1993, §13.3):
    resample the questions with replacement `resamples` times and take the central
    `confidence` share of the resampled means. Seeded, so a report is reproducible."""
    if not values:
        return (math.nan, math.nan)
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    tail = (1 - confidence) / 2
    return (percentile(means, 100 * tail), percentile(means, 100 * (1 - tail)))


def mcnemar_exact_p(won: int, lost: int) -> float:
    """Two-sided exact McNemar test (McNemar 1947; the binomial form for small counts): the
    chance that the questions two strategies disagree on split at least this unevenly if
    both were equally good. Only the discordant questions carry information; with 100
    questions the bootstrap intervals of two strategies can overlap while the paired split
    (e.g. 19 won, 3 lost) is clearly not chance."""
    n = won + lost
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(won, lost) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class StrategySummary:
    strategy: str
    questions: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    completion_tokens_per_question: float
    prompt_tokens_per_question: float
    sub_requests_per_question: float
    latency_p50_s: float
    latency_p95_s: float
    questions_per_s: float
    errors: int
    # Question by question against `baseline` (the run's first strategy): right here and
    # wrong there (`won`), the reverse (`lost`), and the exact McNemar p-value of that split.
    baseline: str | None = None
    won: int | None = None
    lost: int | None = None
    paired_p: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise(strategy: str, outcomes: Sequence[Outcome], wall_s: float, seed: int = 0,
              baseline: tuple[str, Sequence[Outcome]] | None = None) -> StrategySummary:
    """The numbers of one strategy's pass over the questions (`wall_s`: its wall time), and
    with `baseline` (label, outcomes) the paired comparison on the questions both answered."""
    n = len(outcomes)
    hits = [1.0 if o.correct else 0.0 for o in outcomes]
    low, high = bootstrap_interval(hits, seed=seed)
    latencies = [o.latency_s for o in outcomes]

    def mean(values: Sequence[float]) -> float:
        return sum(values) / len(values) if values else math.nan

    return StrategySummary(
        strategy=strategy, questions=n, correct=int(sum(hits)), accuracy=mean(hits),
        ci_low=low, ci_high=high,
        completion_tokens_per_question=mean([o.completion_tokens for o in outcomes]),
        prompt_tokens_per_question=mean([o.prompt_tokens for o in outcomes]),
        sub_requests_per_question=mean([o.sub_requests for o in outcomes]),
        latency_p50_s=percentile(latencies, 50), latency_p95_s=percentile(latencies, 95),
        questions_per_s=n / wall_s if wall_s > 0 else math.nan,
        errors=sum(o.error is not None for o in outcomes),
        **(_paired(baseline, outcomes) if baseline is not None else {}),
    )


def _paired(baseline: tuple[str, Sequence[Outcome]],
            outcomes: Sequence[Outcome]) -> dict[str, Any]:
    label, base = baseline
    right_there = {o.question_id: o.correct for o in base}
    pairs = [(o.correct, right_there[o.question_id]) for o in outcomes
             if o.question_id in right_there]
    won = sum(here and not there for here, there in pairs)
    lost = sum(there and not here for here, there in pairs)
    return {"baseline": label, "won": won, "lost": lost, "paired_p": mcnemar_exact_p(won, lost)}
