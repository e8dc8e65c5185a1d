"""DeepConf: cut weak reasoning traces while they are generated, and weight the vote by
confidence (Fu et al. 2025, "Deep Think with Confidence"; reference code
facebookresearch/deepconf).

Why: self-consistency spends the same tokens on every trace and counts every answer once, yet
a trace that the model was unsure about over a long stretch is rarely right. DeepConf measures
that stretch while the trace is generated, stops the trace there, and lets the confident
traces outvote the rest.

- Token confidence is Refinery's per-token certainty (`Sample.token_certainty`, what a watcher
  is called with): the exact self-certainty KL(U‖p) where the engine plugin runs, else the
  paper's estimate, minus the mean of the top-20 logprobs. Higher is more confident. Option
  `confidence="topk"` asks for the paper's estimate even where the exact value exists.
- Group confidence is the mean token confidence over the last `group_window` tokens (2048 in
  the paper, §3.1). A trace's score is its lowest group confidence over every window position,
  or the mean of all its tokens when it is shorter than the window
  (server/engine/certainty/summary.py computes the same at the engine's fixed 2048).
- Online DeepConf: `warmup` traces (16 in the paper) are drawn in full as one batch, and the
  threshold is the (100 − eta) percentile of their scores: eta = 10 keeps the top 10%
  (DeepConf-low, the 90th percentile), eta = 90 the top 90% (DeepConf-high, the 10th).
  Every later trace is terminated the moment its group confidence falls below the threshold.
- The vote: terminated traces do not vote. Each finished trace in the filter (below) gives its
  answer its score as weight, summed per answer; the largest total wins
  (`strategies.voting.weighted_vote`).
- Consensus stop: sampling stops once the leading answer holds a share ≥ `consensus` (0.95) of
  the vote weight of every finished trace, checked after the warm-up and after each window, or
  when `max_samples` traces were drawn.

Where Refinery differs from the paper and its reference code:
- Certainty: the exact self-certainty by default, which the engine plugin computes from the
  whole distribution; per token the top-20 estimate agrees with it only loosely (Spearman
  0.59 per token, 0.80 per sample: docs/benchmarks.md).
- A trace is judged only once it has a full window, as the reference code's logits processor
  does. The mean of a trace's first few tokens is too noisy to cut on (with eta = 10 most
  traces would dip under the threshold within their first tokens), and judging full windows
  only makes online and offline agree: a trace at least a window long is terminated exactly
  when its score would be under the threshold. A shorter trace is never terminated; the vote
  filter judges it by its score (its mean).
- The reference code forces EOS from a per-request logits processor; here the watcher closes
  the sub-request, which aborts it in the engine. A terminated trace keeps the text generated
  so far, `stopped_by_watcher`, and finish_reason "terminated" (`WATCHER_STOP`).
- Later traces are drawn in windows of `window` (the reference draws the rest of the budget in
  one batch), so that the consensus stop, described in the paper but absent from the
  reference code (optillm re-implements it), can stop sampling between windows. Traces are
  judged in index order, so a seeded run is reproducible.
- The vote filter: by default the reference code's online filter, the finished traces whose
  score reaches the threshold (warm-up traces included; for the warm-up alone this is its top
  eta%, up to interpolation). `filter_top=k` instead keeps the top k% of finished traces by
  score, the paper's offline filter.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from strategies.answers import AnswerGroups, parse_answer_format
from strategies.base import (
    CertaintyMethod,
    Result,
    Sample,
    Sampler,
    Strategy,
    register,
)
from strategies.tool_votes import ToolVoteOptions, sample_answer
from strategies.voting import Vote, weighted_vote

__all__ = [
    "DeepConfOptions",
    "GroupConfidenceWatcher",
    "lowest_group_confidence",
    "percentile",
    "run_deepconf",
]

StoppedBy = Literal["consensus", "max_samples"]

# The vote weight of a trace whose score is missing or not positive. Both certainties are
# ≥ 0 (a KL divergence; minus a mean logprob), so this only guards against a backend that
# returned no values: such a trace still votes, by a hair, instead of cancelling others out.
MIN_WEIGHT = 1e-9


class DeepConfOptions(ToolVoteOptions):
    """Online DeepConf's options. The defaults are the paper's DeepConf-low, with a budget of
    32 traces instead of its 256."""

    max_samples: int = Field(
        default=32, ge=1, le=64, description="Most traces to draw, the warm-up included."
    )
    warmup: int = Field(
        default=16, ge=1, le=64, validate_default=True,
        description="Traces drawn in full first; their scores set the termination threshold "
        "(16 in the paper). At most max_samples.",
    )
    eta: int = Field(
        default=10, ge=1, le=99,
        description="Percent of the warm-up the threshold keeps: it is the (100 - eta) "
        "percentile of their scores. 10 = DeepConf-low (aggressive), 90 = DeepConf-high.",
    )
    group_window: int = Field(
        default=2048, ge=16, le=8192,
        description="Tokens per group: a trace's score is its lowest mean certainty over this "
        "many consecutive tokens, and a later trace is terminated once such a mean falls "
        "below the threshold (2048 in the paper).",
    )
    consensus: float = Field(
        default=0.95, gt=0.5, le=1.0,
        description="Stop sampling once the leading answer holds this share of the vote weight.",
    )
    confidence: Literal["self_certainty", "topk"] = Field(
        default="self_certainty",
        description="Token confidence: self_certainty (exact where the engine plugin runs, "
        "else the top-20 estimate) or topk (the paper's: minus the mean of the top-20 "
        "logprobs, always).",
    )
    filter_top: int | None = Field(
        default=None, ge=1, le=100,
        description="Traces that vote: the top filter_top percent of finished traces by score; "
        "unset: the finished traces whose score reaches the threshold (the top eta percent "
        "of the warm-up).",
    )
    window: int = Field(
        default=8, ge=1, le=64,
        description="Traces drawn together after the warm-up; consensus is checked between "
        "windows.",
    )

    @field_validator("warmup")
    @classmethod
    def _warmup_within_budget(cls, value: int, info: ValidationInfo) -> int:
        budget = info.data.get("max_samples")  # absent when max_samples itself was invalid
        if budget is not None and value > budget:
            raise ValueError(f"warmup ({value}) must not exceed max_samples ({budget})")
        return value

    def sample_budget(self) -> int:
        return self.max_samples

    def certainty_source(self) -> CertaintyMethod | None:
        return "topk" if self.confidence == "topk" else None


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0 ≤ q ≤ 100) with linear interpolation between the two nearest
    ranks: numpy's default, which the reference code uses (`np.percentile`). Sorted values
    x_0 ≤ … ≤ x_{n-1}: rank r = q/100 · (n − 1), result x_⌊r⌋ + (r − ⌊r⌋)(x_⌈r⌉ − x_⌊r⌋)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside [0, 100]")
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    a, b = ordered[low], ordered[high]
    # Clamped: rounding must not put the result outside [a, b], so that the best warm-up
    # trace always reaches a threshold at the 100th percentile or below.
    return min(max(a + (rank - low) * (b - a), a), b)


def lowest_group_confidence(values: Sequence[float], window: int) -> float | None:
    """A trace's score: the lowest mean of `window` consecutive token confidences, the mean of
    all of them when there are fewer, None when there are none.

    The running sum is updated in the same order as `GroupConfidenceWatcher`'s, so that a
    trace at least a window long is terminated exactly when this is below the threshold."""
    if window < 1:
        raise ValueError("window must be positive")
    if not values:
        return None
    width = min(window, len(values))
    total = 0.0
    lowest = float("inf")
    for i, value in enumerate(values):
        total += value if i < width else value - values[i - width]
        if i + 1 >= width:
            lowest = min(lowest, total)
    return lowest / width


class GroupConfidenceWatcher:
    """A `TokenWatcher` for one trace: True once the mean of the last `window` token
    confidences falls below `threshold`.

    It is called with the trace's confidences so far, a sequence that grows by one or more
    values per call. It keeps the sum of the current window and how many values it has seen,
    so a call costs O(new values), not O(window). A window is judged only once it is full (see
    the module docstring). One watcher per trace: its state is that trace's.
    """

    def __init__(self, threshold: float, window: int) -> None:
        if window < 1:
            raise ValueError("window must be positive")
        self.threshold = threshold
        self.window = window
        self.seen = 0  # values added to the running sum so far
        self.total = 0.0  # sum of values[seen - window : seen]
        self.stopped_at: int | None = None  # tokens when a full window first fell below

    def __call__(self, values: Sequence[float]) -> bool:
        if self.stopped_at is not None:
            return True
        window = self.window
        for i in range(self.seen, len(values)):
            self.total += values[i] if i < window else values[i] - values[i - window]
            if i + 1 >= window and self.total / window < self.threshold:
                self.seen = i + 1
                self.stopped_at = i + 1
                return True
        self.seen = len(values)
        return False


def _trace_score(sample: Sample, window: int) -> float | None:
    """The lowest group confidence from the per-token values; without them (a backend that
    gave none) the engine's own lowest group certainty or the mean, else None."""
    score = lowest_group_confidence(sample.token_certainty, window)
    if score is not None:
        return score
    if sample.lowest_group_certainty is not None:
        return sample.lowest_group_certainty
    return sample.certainty


def _rank(score: float | None) -> float:
    return score if score is not None else float("-inf")


def _weight(score: float | None) -> float:
    return score if score is not None and score > 0 else MIN_WEIGHT


class _Ballot:
    """The traces judged so far and the vote over them, recomputed after each window (at most
    64 traces; answers are grouped once, as they arrive)."""

    def __init__(self, options: DeepConfOptions) -> None:
        self.options = options
        self.spec = parse_answer_format(options.answer_format)
        self.book = AnswerGroups()
        self.traces: list[Sample] = []
        self.scores: list[float | None] = []
        self.answers: list[str | None] = []
        self.groups: list[int | None] = []  # None: terminated, or no answer
        self.threshold: float | None = None
        self.pool: list[int] = []  # positions of the traces that vote
        self.vote: Vote | None = None
        self.share = 0.0

    def add(self, trace: Sample) -> None:
        answer = sample_answer(trace, self.spec, self.options.tool_vote,
                               self.options.ignore_args).answer
        self.traces.append(trace)
        self.scores.append(_trace_score(trace, self.options.group_window))
        self.answers.append(answer)
        # A terminated trace's answer (from the text it was cut at) never votes.
        self.groups.append(None if trace.stopped_by_watcher else self.book.add(answer))

    @property
    def finished(self) -> list[int]:
        return [i for i, trace in enumerate(self.traces) if not trace.stopped_by_watcher]

    @property
    def terminated(self) -> int:
        return sum(trace.stopped_by_watcher for trace in self.traces)

    def set_threshold(self) -> None:
        known = [score for score in self.scores if score is not None]
        if known:
            self.threshold = percentile(known, 100 - self.options.eta)

    def _filtered(self) -> list[int]:
        finished = self.finished
        top = self.options.filter_top
        if top is None:
            if self.threshold is None:  # no trace had a score to set it from
                return finished
            threshold = self.threshold
            return [i for i in finished if _rank(self.scores[i]) >= threshold]
        keep = max(1, -(-len(finished) * top // 100))  # ceil without float rounding
        best = sorted(finished, key=lambda i: (-_rank(self.scores[i]), i))[:keep]
        return sorted(best)

    def _weighted(self, positions: list[int]) -> Vote:
        return weighted_vote([self.traces[i] for i in positions],
                             [self.groups[i] for i in positions],
                             [_weight(self.scores[i]) for i in positions])

    def count(self) -> None:
        """Filter the finished traces and vote; and the consensus share, the leader's share of
        the weight of every finished trace (not only the filtered ones: with eta = 10 the
        filter may hold a single trace, which would be unanimous by itself)."""
        self.pool = self._filtered()
        self.vote = self._weighted(self.pool) if self.pool else None
        finished = self.finished
        if not finished:
            self.share = 0.0
            return
        everyone = self._weighted(finished)
        total = sum(everyone.tally.values())
        group = everyone.group
        self.share = everyone.tally[group] / total if group is not None and total > 0 else 0.0

    def chosen(self) -> int:
        """The vote's winner; without an answer to vote on, the highest-scoring finished
        trace (every trace when none finished, which cannot happen: the warm-up is never
        watched)."""
        if self.vote is not None and self.vote.group is not None:
            return self.pool[self.vote.winner]
        candidates = self.finished or list(range(len(self.traces)))
        return max(candidates, key=lambda i: (_rank(self.scores[i]), -i))


async def run_deepconf(sampler: Sampler, options: DeepConfOptions) -> Result:
    """Online DeepConf: a full warm-up sets the threshold, then watched windows of traces until
    the confidence-weighted vote reaches consensus or `max_samples` were drawn."""
    ballot = _Ballot(options)
    try:
        for trace in await asyncio.gather(*sampler.submit(options.warmup)):
            ballot.add(trace)
        ballot.set_threshold()
        ballot.count()
        threshold = "none" if ballot.threshold is None else f"{ballot.threshold:.3f}"
        sampler.report_progress(
            f"warm-up: {options.warmup} traces, threshold {threshold} (eta {options.eta}%), "
            f"leader share {ballot.share:.2f}")
        number = 0
        while len(ballot.traces) < options.max_samples and ballot.share < options.consensus:
            count = min(options.window, options.max_samples - len(ballot.traces))
            if ballot.threshold is None:
                pending = sampler.submit(count)
            else:  # a watcher holds one trace's state: one submit per trace
                pending = [awaitable for _ in range(count) for awaitable in sampler.submit(
                    1, watch=GroupConfidenceWatcher(ballot.threshold, options.group_window))]
            batch = await asyncio.gather(*pending)  # in submit order, which is index order
            for trace in batch:
                ballot.add(trace)
            ballot.count()
            number += 1
            sampler.report_progress(
                f"window {number}: {len(batch)} traces, "
                f"{sum(t.stopped_by_watcher for t in batch)} terminated, "
                f"leader share {ballot.share:.2f}")
    finally:
        await sampler.abort_outstanding()

    chosen = ballot.chosen()
    vote = ballot.vote
    winning = vote.group if vote is not None else None
    drawn = len(ballot.traces)
    stopped_by: StoppedBy = "consensus" if drawn < options.max_samples else "max_samples"
    return Result(
        chosen=ballot.traces[chosen],
        samples=tuple(ballot.traces),
        answers=tuple(ballot.answers),
        answer=ballot.book.representative(winning) if winning is not None else None,
        votes={ballot.book.representative(group): round(weight, 4)
               for group, weight in (vote.tally.items() if vote is not None else ())},
        stopped_early=drawn < options.max_samples,
        details={
            "threshold": None if ballot.threshold is None else round(ballot.threshold, 4),
            "eta": options.eta,
            "terminated": ballot.terminated,
            "warmup": options.warmup,
            "filtered": len(ballot.pool),
            "consensus_share": round(ballot.share, 4),
            "stopped_by": stopped_by,
            "confidence": options.confidence,
            "scores": {str(trace.index): None if score is None else round(score, 4)
                       for trace, score in zip(ballot.traces, ballot.scores, strict=True)},
        },
    )


DEEPCONF = register(
    Strategy(
        name="deepconf",
        description="DeepConf (Fu et al. 2025): a warm-up sets a confidence threshold, later "
        "traces stop as soon as their sliding-window confidence falls below it, and the "
        "confident traces vote weighted by confidence until one answer holds the consensus "
        "share.",
        options=DeepConfOptions,
        run=run_deepconf,
    )
)
