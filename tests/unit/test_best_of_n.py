"""Best-of-N selections and Borda weights on a scripted sampler."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from strategies.base import Sample
from strategies.best_of_n import BestOfNOptions, run_best_of_n
from strategies.voting import borda_vote, majority_vote
from tests.unit.fake_sampler import FakeSampler, Scripted


def run(script: list[Scripted], **options: object):
    sampler = FakeSampler(script)
    result = asyncio.run(run_best_of_n(sampler, BestOfNOptions(n=len(script), **options)))
    assert sampler.outstanding == []
    return result


def sample(index: int, certainty: float) -> Sample:
    return Sample(index=index, text="", token_ids=(1,), finish_reason="stop",
                  certainty=certainty)


def test_borda_weights_are_rank_powers() -> None:
    # Certainty ranks: s1 (r=1), s3 (r=2), s0 (r=3), s2 (r=4); N = 4, p = 0.5.
    samples = [sample(0, 2.0), sample(1, 9.0), sample(2, 1.0), sample(3, 5.0)]
    groups = [0, 1, 0, 0]
    vote = borda_vote(samples, groups, power=0.5)
    assert vote.tally[1] == pytest.approx(4**0.5)
    assert vote.tally[0] == pytest.approx(3**0.5 + 2**0.5 + 1**0.5)
    assert vote.group == 0
    assert vote.winner == 3  # the most certain sample of the winning answer


def test_borda_with_large_power_follows_the_most_certain_sample() -> None:
    samples = [sample(0, 2.0), sample(1, 9.0), sample(2, 1.0), sample(3, 5.0)]
    assert borda_vote(samples, [0, 1, 0, 0], power=4.0).group == 1
    assert borda_vote(samples, [0, 1, 0, 0], power=0.0).group == 0  # = majority


def test_default_selection_is_borda_when_answers_are_extractable() -> None:
    script = [Scripted("The answer is 3.", certainty=1.0), Scripted("The answer is 4.", 5.0),
              Scripted("The answer is 3.", certainty=2.0)]
    result = run(script)
    assert result.details["selection"] == "borda"
    # Ranks: "4" (5.0) r=1 → √3; "3" (2.0) r=2 → √2; "3" (1.0) r=3 → 1. "3": 2.41 > 1.73.
    assert result.answer == "3"
    assert result.chosen.index == 2


def test_open_ended_text_uses_argmax_certainty() -> None:
    script = [Scripted("A poem about the sea.", 1.0), Scripted("A poem about hills.", 3.0),
              Scripted("A poem about rain.", 2.0)]
    result = run(script, selection="borda")
    assert result.details["selection"] == "self_certainty"
    assert result.chosen.index == 1 and result.answer is None


@pytest.mark.parametrize(
    ("selection", "winner"),
    [("self_certainty", 1), ("logprob", 2), ("majority", 0)],
)
def test_selections(selection: str, winner: int) -> None:
    script = [
        Scripted("The answer is 3.", certainty=1.0, tokens=10, logprob=-5.0),
        Scripted("The answer is 4.", certainty=5.0, tokens=10, logprob=-8.0),
        Scripted("The answer is 5.", certainty=2.0, tokens=4, logprob=-1.0),
        Scripted("The answer is 3.", certainty=0.5, tokens=10, logprob=-9.0),
    ]
    result = run(script, selection=selection)
    assert result.chosen.index == winner
    assert result.votes == {"3": 2, "4": 1, "5": 1}


def test_all_n_samples_are_submitted_at_once() -> None:
    sampler = FakeSampler([Scripted("x", 1.0)] * 6)
    asyncio.run(run_best_of_n(sampler, BestOfNOptions(n=6)))
    assert sampler.submitted == [(i, 0) for i in range(6)]


def test_a_vote_returns_a_finished_sample_of_the_winning_answer_over_a_truncated_one() -> None:
    truncated = Sample(index=0, text="The answer is 3 and furth", token_ids=(1,) * 8,
                       finish_reason="length", certainty=9.0)
    finished = Sample(index=1, text="The answer is 3.", token_ids=(1,) * 4,
                      finish_reason="stop", certainty=2.0)
    other = Sample(index=2, text="The answer is 4.", token_ids=(1,) * 4, finish_reason="stop",
                   certainty=1.0)
    for vote in (borda_vote([truncated, finished, other], [0, 0, 1], power=0.5),
                 majority_vote([truncated, finished, other], [0, 0, 1])):
        assert vote.group == 0 and vote.winner == 1
    # Only truncated samples for the answer: the most certain of them.
    less_certain = dataclasses.replace(truncated, index=3, certainty=1.0)
    assert majority_vote([less_certain, truncated, other], [0, 0, 1]).winner == 1
