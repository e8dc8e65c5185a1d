"""The self-consistency loop on a scripted sampler: stop points, priorities, aborts."""

from __future__ import annotations

import asyncio

import pytest

from strategies.self_consistency import SelfConsistencyOptions, run_self_consistency
from tests.unit.fake_sampler import FakeSampler, Scripted, answers


def run(sampler: FakeSampler, **options: object):
    return asyncio.run(run_self_consistency(sampler, SelfConsistencyOptions(**options)))


def test_esc_stops_exactly_at_the_first_unanimous_window() -> None:
    script = answers("1", "2", "1", "1", "3",  # window 1: split
                     "4", "4", "4", "4", "4",  # window 2: unanimous → stop here
                     *["9"] * 10)
    sampler = FakeSampler(script)
    result = run(sampler, stop="esc", window=5, max_samples=20, lookahead=0)
    assert len(result.samples) == 10
    assert result.stopped_early
    assert result.answer == "4"
    assert result.votes == {"1": 3, "2": 1, "3": 1, "4": 5}
    assert len(sampler.submitted) == 10  # no lookahead: nothing beyond window 2 was drawn


def test_esc_lookahead_runs_the_next_window_at_lower_priority_and_aborts_it() -> None:
    script = [*answers("7", "7", "7"), *answers("8", "8", "8", hangs=True)]
    sampler = FakeSampler(script)
    result = run(sampler, stop="esc", window=3, max_samples=6, lookahead=1)
    assert result.answer == "7" and len(result.samples) == 3
    assert sampler.submitted == [(0, 0), (1, 0), (2, 0), (3, 1), (4, 1), (5, 1)]
    assert sorted(sampler.aborted) == [3, 4, 5]
    assert sampler.outstanding == []


def test_asc_stops_after_four_agreeing_samples() -> None:
    sampler = FakeSampler(answers(*["5"] * 16))
    result = run(sampler, stop="asc", window=2, max_samples=16, lookahead=0)
    assert len(result.samples) == 4 and result.stopped_early


def test_asc_stop_point_matches_replaying_the_rule() -> None:
    # 6-1 is the first settled count with one dissenting answer.
    values = ["3", "3", "2", "3", "3", "3", "3", "3", "3", "3"]
    sampler = FakeSampler(answers(*values))
    result = run(sampler, stop="asc", window=3, max_samples=10, lookahead=1)
    assert len(result.samples) == 7
    assert result.votes == {"3": 6, "2": 1}


def test_fixed_draws_every_sample_in_one_batch() -> None:
    sampler = FakeSampler(answers("1", "1", "1", "1", "2", "2", "2", "3"))
    result = run(sampler, stop="fixed", max_samples=8)
    assert len(result.samples) == 8 and not result.stopped_early
    assert {p for _, p in sampler.submitted} == {0}
    assert result.answer == "1"


def test_majority_ties_go_to_the_more_certain_answer() -> None:
    script = [Scripted("The answer is 1.", certainty=1.0), Scripted("The answer is 2.", 3.0),
              Scripted("The answer is 1.", certainty=2.0), Scripted("The answer is 2.", 1.5)]
    result = run(FakeSampler(script), stop="fixed", max_samples=4)
    assert result.answer == "2"
    assert result.chosen.index == 1  # the most certain sample of the winning answer


def test_a_vote_asks_for_no_certainty_unless_it_returns_the_most_certain_writing() -> None:
    assert SelfConsistencyOptions().certainty_source() == "none"
    most_certain = SelfConsistencyOptions(representative="most_certain")
    assert most_certain.certainty_source() is None  # exact where the engine plugin runs


def test_without_certainty_ties_go_to_the_earlier_answer_and_its_earliest_sample() -> None:
    script = [Scripted("The answer is 1."), Scripted("The answer is 2."),
              Scripted("The answer is 2."), Scripted("The answer is 1.")]
    result = run(FakeSampler(script), stop="fixed", max_samples=4)
    assert result.answer == "1" and result.chosen.index == 0


def test_no_extractable_answer_falls_back_to_the_most_certain_sample() -> None:
    script = [Scripted("Roses are red.", certainty=0.5), Scripted("Violets are blue.", 2.0)]
    result = run(FakeSampler(script), stop="fixed", max_samples=2)
    assert result.answer is None and result.chosen.index == 1


def test_a_failing_sample_aborts_everything_outstanding() -> None:
    engine_error = Scripted("", delay=0.01, raises=RuntimeError("engine error"))
    sampler = FakeSampler([*answers("1"), engine_error, *answers("3", "4", "5", hangs=True)])
    with pytest.raises(RuntimeError, match="engine error"):
        run(sampler, stop="esc", window=5, max_samples=5)
    assert sampler.outstanding == []
    assert sorted(sampler.aborted) == [2, 3, 4]


def test_cancelling_the_strategy_aborts_every_sub_request() -> None:
    sampler = FakeSampler(answers(*"12345", hangs=True))

    async def cancel_soon() -> None:
        task = asyncio.create_task(
            run_self_consistency(sampler, SelfConsistencyOptions(stop="esc", max_samples=5))
        )
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_soon())
    assert sampler.outstanding == []
    assert sorted(sampler.aborted) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("option", "value"),
    [("max_samples", 0), ("max_samples", 65), ("window", 0), ("confidence", 1.0),
     ("confidence", 0.5), ("lookahead", 9), ("stop", "never"), ("answer_format", "regex:(")],
)
def test_options_are_bounded(option: str, value: object) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as exc:
        SelfConsistencyOptions(**{option: value})
    assert exc.value.errors()[0]["loc"] == (option,)


def test_unknown_option_is_refused() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        SelfConsistencyOptions(samples=3)
