"""DeepConf on a scripted sampler: percentile threshold, sliding-window scores, the watcher that
terminates traces, the confidence-weighted vote and its filter, the consensus stop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from strategies.base import WATCHER_STOP
from strategies.deepconf import (
    DeepConfOptions,
    GroupConfidenceWatcher,
    lowest_group_confidence,
    percentile,
    run_deepconf,
)
from tests.unit.fake_sampler import FakeSampler, Scripted

WINDOW = 16  # the smallest group_window


def trace(answer: str | None, values: Sequence[float], *, answer_first: bool = False,
          **kwargs: object) -> Scripted:
    """A trace with one token (a word) per value, ending with 'The answer is X.', or starting
    with it so that a copy cut short still states it."""
    filler = ["step "] * (len(values) - (4 if answer is not None else 0))
    if answer is None:
        words = filler
    elif answer_first:
        words = ["The ", "answer ", "is ", f"{answer}. ", *filler]
    else:
        words = [*filler, "The ", "answer ", "is ", f"{answer}."]
    return Scripted("".join(words), token_certainty=tuple(values), pieces=tuple(words),
                    **kwargs)


def flat(answer: str | None, score: float, tokens: int = 20, **kwargs: object) -> Scripted:
    """A trace whose every token has the same confidence: its score is that value."""
    return trace(answer, [score] * tokens, **kwargs)


def run(sampler: FakeSampler, **options: object):
    options.setdefault("group_window", WINDOW)
    return asyncio.run(run_deepconf(sampler, DeepConfOptions(**options)))


# --- percentile -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([5.0], 0, 5.0),
        ([5.0], 90, 5.0),
        ([5.0], 100, 5.0),
        ([4.0, 1.0, 3.0, 2.0], 50, 2.5),  # unsorted input, between the two middle values
        ([4.0, 1.0, 3.0, 2.0], 0, 1.0),
        ([4.0, 1.0, 3.0, 2.0], 100, 4.0),
        ([float(v) for v in range(1, 11)], 90, 9.1),  # eta = 10, DeepConf-low
        ([float(v) for v in range(1, 11)], 10, 1.9),  # eta = 90, DeepConf-high
        ([2.0, 2.0, 2.0], 37, 2.0),
    ],
)
def test_percentile_interpolates_linearly_between_ranks(
        values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected)


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=40), st.floats(0, 100))
def test_percentile_matches_numpys_default(values: list[float], q: float) -> None:
    result = percentile(values, q)
    assert result == pytest.approx(float(np.percentile(values, q)), rel=1e-9, abs=1e-6)
    assert min(values) <= result <= max(values)


@pytest.mark.parametrize(("values", "q"), [([], 50), ([1.0], -1), ([1.0], 100.5)])
def test_percentile_refuses_no_values_and_out_of_range_ranks(values: list[float], q: float) -> None:
    with pytest.raises(ValueError):
        percentile(values, q)


# --- scores: the lowest group confidence ----------------------------------------------------


@pytest.mark.parametrize(
    ("values", "window", "expected"),
    [
        ([2.0, 4.0, 6.0], 16, 4.0),  # shorter than the window: the mean
        ([3.0, 3.0, 1.0, 1.0, 3.0, 3.0], 2, 1.0),  # the worst window
        ([3.0, 3.0, 1.0, 1.0, 3.0, 3.0], 3, 5 / 3),
        ([3.0, 3.0, 1.0, 1.0, 3.0, 3.0], 6, 14 / 6),  # exactly one window: the mean
        ([7.0], 1, 7.0),
        ([], 4, None),
    ],
)
def test_lowest_group_confidence_is_the_lowest_window_mean(
        values: list[float], window: int, expected: float | None) -> None:
    assert lowest_group_confidence(values, window) == pytest.approx(expected)


def brute_force_score(values: Sequence[float], window: int) -> float:
    width = min(window, len(values))
    return min(sum(values[i:i + width]) / width for i in range(len(values) - width + 1))


@given(st.lists(st.floats(0, 50), min_size=1, max_size=80), st.integers(1, 40))
def test_lowest_group_confidence_matches_brute_force(values: list[float], window: int) -> None:
    expected = brute_force_score(values, window)
    assert lowest_group_confidence(values, window) == pytest.approx(expected, abs=1e-9)


# --- the watcher ----------------------------------------------------------------------------


def first_dip(values: Sequence[int], window: int, threshold: Fraction) -> int | None:
    """Exactly: the token count at which a full window's mean first falls below threshold."""
    for end in range(window, len(values) + 1):
        if Fraction(sum(values[end - window:end]), window) < threshold:
            return end
    return None


class CountingReads(Sequence[float]):
    """A growing list that counts how often its values are read."""

    def __init__(self, values: Sequence[float]) -> None:
        self.values = list(values)
        self.reads = 0

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: int) -> float:  # type: ignore[override]
        self.reads += 1
        return self.values[index]


@given(
    values=st.lists(st.integers(0, 20), min_size=1, max_size=60),
    window=st.integers(1, 12),
    odd_quarters=st.integers(0, 40),
    chunks=st.lists(st.integers(1, 5), min_size=60, max_size=60),
)
def test_watcher_stops_at_the_first_full_window_under_the_threshold(
        values: list[int], window: int, odd_quarters: int, chunks: list[int]) -> None:
    # Integer values and a threshold of an odd number of quarters: every float sum is exact,
    # and a window mean is either equal to the threshold or far from it, so the float
    # comparison agrees with the exact reference.
    threshold = Fraction(2 * odd_quarters + 1, 4)
    watcher = GroupConfidenceWatcher(float(threshold), window)
    shown = CountingReads([])
    stopped_after = None
    for size in chunks:
        if len(shown) == len(values):
            break
        shown.values.extend(float(v) for v in values[len(shown):len(shown) + size])
        if watcher(shown):
            stopped_after = len(shown)
            break
    dip = first_dip(values, window, threshold)
    assert watcher.stopped_at == dip
    assert (stopped_after is not None) == (dip is not None)
    if dip is not None:  # stopped by the call that showed the dipping token
        assert stopped_after is not None and stopped_after - size < dip <= stopped_after
    assert shown.reads <= 2 * len(shown)  # O(1) per token: each value added, then evicted
    if len(values) >= window:  # online and offline agree on traces of a window or more
        score = lowest_group_confidence([float(v) for v in values], window)
        assert score is not None and (score < threshold) == (dip is not None)


def test_watcher_never_judges_a_partial_window() -> None:
    watcher = GroupConfidenceWatcher(threshold=5.0, window=4)
    assert not watcher([0.0, 0.0, 0.0])  # mean 0, but only 3 of 4 tokens
    assert watcher([0.0, 0.0, 0.0, 0.0])
    assert watcher.stopped_at == 4


# --- the strategy ---------------------------------------------------------------------------

# Four warm-up traces: two at 5.0 disagreeing, two at 3.0. With eta = 50 the threshold is 4.0
# and the vote after the warm-up is split 50/50 between "1" and "2".
SPLIT_WARMUP = [flat("1", 5.0), flat("2", 5.0), flat("3", 3.0), flat("3", 3.0)]


def test_threshold_is_the_percentile_of_the_warmup_scores() -> None:
    scores = [float(v) for v in range(1, 11)]
    for eta, expected in [(10, 9.1), (90, 1.9), (50, 5.5)]:
        sampler = FakeSampler([flat(str(i), s) for i, s in enumerate(scores)])
        result = run(sampler, warmup=10, max_samples=10, eta=eta)
        assert result.details["threshold"] == pytest.approx(expected)
        assert sampler.calls[0].count == 10 and not sampler.calls[0].watched


def test_a_later_trace_is_terminated_at_the_token_its_window_mean_drops_below_threshold() -> None:
    # Threshold 4.0. After 16 tokens at 5.0, each 1.0 lowers the window mean by 0.25: the
    # fifth (token 21) takes it to 3.75 < 4.0.
    falling = trace("7", [5.0] * 16 + [1.0] * 14, answer_first=True)
    sampler = FakeSampler([*SPLIT_WARMUP, falling])
    result = run(sampler, warmup=4, max_samples=5, eta=50, window=1)
    cut = result.samples[4]
    assert cut.stopped_by_watcher and cut.finish_reason == WATCHER_STOP
    assert cut.num_tokens == 21
    assert sampler.stopped == [4]
    assert result.details["terminated"] == 1
    # Its cut text still states an answer, but a terminated trace never votes.
    assert result.answers[4] == "7" and "7" not in result.votes
    assert result.details["filtered"] == 2


def test_each_later_trace_gets_its_own_watcher() -> None:
    later = [flat("1", 5.0), flat("2", 5.0), flat("1", 5.0)]
    sampler = FakeSampler([*SPLIT_WARMUP, *later])
    run(sampler, warmup=4, max_samples=7, eta=50, window=3, consensus=0.99)
    assert [call.count for call in sampler.calls] == [4, 1, 1, 1]
    watchers = [call.watch for call in sampler.calls[1:]]
    assert all(isinstance(w, GroupConfidenceWatcher) for w in watchers)
    assert len({id(w) for w in watchers}) == 3


def test_a_trace_shorter_than_the_window_finishes_but_votes_only_above_the_threshold() -> None:
    short_and_weak = flat("9", 1.0, tokens=10)  # mean 1.0 < 4.0, but never a full window
    sampler = FakeSampler([*SPLIT_WARMUP, short_and_weak])
    result = run(sampler, warmup=4, max_samples=5, eta=50, window=1)
    assert not result.samples[4].stopped_by_watcher and sampler.stopped == []
    assert "9" not in result.votes and result.details["terminated"] == 0


def test_votes_are_weighted_by_score() -> None:
    # Two traces say "1" (1.0 + 1.0), one says "2" (3.0): confidence outweighs the count.
    sampler = FakeSampler([flat("1", 1.0), flat("1", 1.0), flat("2", 3.0)])
    result = run(sampler, warmup=3, max_samples=3, filter_top=100)
    assert result.answer == "2" and result.chosen.index == 2
    assert result.votes == {"1": 2.0, "2": 3.0}


@pytest.mark.parametrize(
    ("filter_top", "answer", "filtered"),
    [(100, "2", 4), (50, "1", 2), (25, "1", 1), (75, "2", 3)],
)
def test_filter_top_keeps_only_the_most_confident_traces(
        filter_top: int, answer: str, filtered: int) -> None:
    script = [flat("1", 5.0), flat("2", 4.0), flat("2", 3.5), flat("2", 3.0)]
    result = run(FakeSampler(script), warmup=4, max_samples=4, filter_top=filter_top)
    assert result.answer == answer
    assert result.details["filtered"] == filtered


def test_the_default_filter_keeps_the_warmup_traces_above_the_threshold() -> None:
    # Threshold at the 90th percentile of 10 warm-up scores (9.1): only the best trace votes,
    # although six traces agree on "2".
    script = [flat("1", 10.0), flat("3", 9.0), *[flat("2", float(s)) for s in range(1, 9)]]
    result = run(FakeSampler(script), warmup=10, max_samples=10, eta=10)
    assert result.answer == "1" and result.details["filtered"] == 1
    assert result.votes == {"1": 10.0}


def test_consensus_stops_sampling_after_the_first_window() -> None:
    agreeing = [flat("1", 5.0), flat("1", 5.0)]
    never_drawn = [flat("2", 5.0)] * 6
    sampler = FakeSampler([*SPLIT_WARMUP, *agreeing, *never_drawn])
    result = run(sampler, warmup=4, max_samples=12, eta=50, window=2, consensus=0.55)
    # Consensus counts every finished trace: after the warm-up "3" leads with 6 of 16; after
    # window 1 "1" holds 15 of 26 = 0.577 >= 0.55. The vote itself counts the filtered traces
    # (score >= the threshold 4.0): "1" 15, "2" 5.
    assert result.answer == "1" and result.votes == {"1": 15.0, "2": 5.0}
    assert len(sampler.submitted) == 6 and len(result.samples) == 6
    assert result.stopped_early
    assert result.details["stopped_by"] == "consensus"
    assert result.details["consensus_share"] == round(15 / 26, 4)
    assert sampler.outstanding == []


def test_unanimous_warmup_stops_before_any_later_trace() -> None:
    sampler = FakeSampler([flat("4", 5.0), flat("4", 4.0), flat("4", 3.0), flat("9", 1.0)])
    result = run(sampler, warmup=3, max_samples=4, eta=50)
    assert len(sampler.submitted) == 3 and result.details["stopped_by"] == "consensus"
    assert result.details["consensus_share"] == 1.0
    assert sampler.progress == ["warm-up: 3 traces, threshold 4.000 (eta 50%), leader share 1.00"]


def test_max_samples_ends_sampling_without_consensus() -> None:
    later = [flat("1", 5.0), flat("2", 5.0), flat("1", 5.0)]
    sampler = FakeSampler([*SPLIT_WARMUP, *later])
    result = run(sampler, warmup=4, max_samples=7, eta=50, window=2)
    assert [call.count for call in sampler.calls] == [4, 1, 1, 1]  # windows of 2, then 1
    assert len(result.samples) == 7 and not result.stopped_early
    assert result.details["stopped_by"] == "max_samples"
    assert result.answer == "1" and result.votes == {"1": 15.0, "2": 10.0}
    assert sampler.progress == [
        "warm-up: 4 traces, threshold 4.000 (eta 50%), leader share 0.38",
        "window 1: 2 traces, 0 terminated, leader share 0.38",
        "window 2: 1 traces, 0 terminated, leader share 0.48",
    ]


def test_a_failing_trace_aborts_its_window_mates() -> None:
    engine_error = Scripted("oops", token_certainty=(5.0,), raises=RuntimeError("engine error"))
    sampler = FakeSampler([*SPLIT_WARMUP, engine_error, flat("1", 5.0, hangs=True)])
    with pytest.raises(RuntimeError, match="engine error"):
        run(sampler, warmup=4, max_samples=6, eta=50, window=2)
    assert sampler.aborted == [5] and sampler.outstanding == []


def test_without_any_answer_the_highest_scoring_finished_trace_is_chosen() -> None:
    script = [flat(None, 2.0), flat(None, 6.0), flat(None, 4.0)]
    result = run(FakeSampler(script), warmup=3, max_samples=3, filter_top=100)
    assert result.answer is None and result.votes == {}
    assert result.chosen.index == 1
    assert result.details["consensus_share"] == 0.0


def test_details_are_json_and_complete() -> None:
    falling = trace("7", [5.0] * 16 + [1.0] * 14)
    sampler = FakeSampler([*SPLIT_WARMUP, falling])
    result = run(sampler, warmup=4, max_samples=5, eta=50, window=1, confidence="topk")
    details = json.loads(json.dumps(result.details))
    assert details == {
        "threshold": 4.0, "eta": 50, "terminated": 1, "warmup": 4, "filtered": 2,
        "consensus_share": 0.375, "stopped_by": "max_samples", "confidence": "topk",
        "scores": {"0": 5.0, "1": 5.0, "2": 3.0, "3": 3.0, "4": 3.75},
    }
    assert [s.index for s in result.samples] == [0, 1, 2, 3, 4]
    assert len(result.answers) == len(result.samples)


# --- options --------------------------------------------------------------------------------


@pytest.mark.parametrize(("confidence", "source"), [("self_certainty", None), ("topk", "topk")])
def test_certainty_source_follows_the_confidence_option(
        confidence: str, source: str | None) -> None:
    assert DeepConfOptions(confidence=confidence).certainty_source() == source


def test_defaults_are_the_papers_deepconf_low() -> None:
    options = DeepConfOptions()
    assert (options.warmup, options.eta, options.group_window) == (16, 10, 2048)
    assert options.sample_budget() == options.max_samples == 32


@pytest.mark.parametrize(
    ("option", "value"),
    [("max_samples", 0), ("max_samples", 65), ("warmup", 0), ("eta", 0), ("eta", 100),
     ("group_window", 15), ("group_window", 8193), ("consensus", 0.5), ("consensus", 1.01),
     ("confidence", "entropy"), ("filter_top", 0), ("filter_top", 101), ("window", 0),
     ("window", 65)],
)
def test_options_are_bounded(option: str, value: object) -> None:
    with pytest.raises(ValidationError) as exc:
        DeepConfOptions(**{option: value})
    assert exc.value.errors()[0]["loc"] == (option,)


@pytest.mark.parametrize("options", [{"max_samples": 8, "warmup": 9}, {"max_samples": 8}])
def test_warmup_may_not_exceed_max_samples(options: dict[str, int]) -> None:
    with pytest.raises(ValidationError, match="must not exceed max_samples") as exc:
        DeepConfOptions(**options)
    assert exc.value.errors()[0]["loc"] == ("warmup",)


def test_warmup_may_spend_the_whole_budget() -> None:
    assert DeepConfOptions(max_samples=4, warmup=4).warmup == 4
