"""Per-strategy numbers of an evaluation: accuracy with a seeded 95% bootstrap interval,
tokens and sub-requests per question, latency percentiles and questions per second."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Outcome", "StrategySummary", "bootstrap_interval", "percentile", "summarise"]


@dataclass(frozen=True)
class Outcome:
    """One question under one strategy, as the client saw it: `reply` is the returned text
    and `detail` the judge's reason where the answer alone does not say it (a failed
    program's output), so a wrong answer can be audited without asking again."""

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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise(strategy: str, outcomes: Sequence[Outcome], wall_s: float,
              seed: int = 0) -> StrategySummary:
    """The numbers of one strategy's pass over the questions (`wall_s`: its wall time)."""
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
    )
