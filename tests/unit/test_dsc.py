"""DSC on a scripted sampler: pre-allocation, the certainty prior, expansion, group history."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from strategies import dsc
from strategies.base import REGISTRY
from strategies.dsc import (
    DSC,
    DscOptions,
    GroupRecord,
    GroupStore,
    allocation,
    asc_stop_point,
    difficulty_prior,
    preallocation,
    run_dsc,
)
from tests.unit.fake_sampler import FakeSampler, Scripted, answers

FAMILY = ("family", "fake:family")  # the group of a FakeSampler request with no `group` option

# Split 2-2, then 5-3 (P 0.75), then 9-3 (P 0.954): ASC first holds at sample 12.
SETTLES_AT_12 = ("1", "2", "1", "2", "1", "1", "2", "1", "1", "1", "1", "1")


@pytest.fixture(autouse=True)
def _fresh_groups() -> Iterator[None]:
    dsc.GROUPS.clear()
    yield
    dsc.GROUPS.clear()


def run(sampler: FakeSampler, **options: object):
    return asyncio.run(run_dsc(sampler, DscOptions(**options)))


def batches(sampler: FakeSampler) -> list[int]:
    return [call.count for call in sampler.calls]


def settle_at_12(family: str = "fake:family", **options: object):
    """A request whose group then remembers a stopping size of 12."""
    result = run(FakeSampler(answers(*SETTLES_AT_12), family=family), **options)
    assert result.details["recorded_size"] == 12
    return result


def unanimous(family: str = "fake:family", count: int = 40, **options: object):
    """A request that settles wherever it is first tested; returns (result, sampler)."""
    sampler = FakeSampler(answers(*["5"] * count), family=family)
    return run(sampler, **options), sampler


# --- the pure rules -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sizes", "history", "step", "max_samples", "expected"),
    [
        pytest.param([], 16, 4, 40, 4, id="no-history-one-window"),
        pytest.param([], 16, 8, 5, 5, id="no-history-capped"),
        pytest.param([4], 16, 4, 40, 4, id="one-size"),
        pytest.param([5], 16, 4, 40, 8, id="rounds-up"),
        pytest.param([4, 8], 16, 4, 40, 8, id="mean-6-up-to-8"),
        pytest.param([4, 4, 4, 8], 16, 4, 40, 8, id="mean-5-up-to-8"),
        pytest.param([12, 12, 4, 4], 2, 4, 40, 4, id="only-the-last-history"),
        pytest.param([1, 1], 16, 4, 40, 4, id="at-least-step"),
        pytest.param([3, 4], 16, 1, 40, 4, id="step-1"),
        pytest.param([40, 64], 16, 4, 40, 40, id="at-most-max-samples"),
        pytest.param([8], 16, 16, 10, 10, id="step-above-max-samples"),
    ],
)
def test_preallocation_rounds_the_mean_of_the_last_history_sizes_up_to_step(
    sizes: list[int], history: int, step: int, max_samples: int, expected: int
) -> None:
    got = preallocation(sizes, history=history, step=step, max_samples=max_samples)
    assert got == expected


@given(st.lists(st.integers(1, 64), max_size=40), st.integers(1, 256), st.integers(1, 16),
       st.integers(1, 64))
def test_preallocation_is_the_least_multiple_of_step_covering_the_mean_within_bounds(
    sizes: list[int], history: int, step: int, max_samples: int
) -> None:
    got = preallocation(sizes, history=history, step=step, max_samples=max_samples)
    recent = sizes[-history:]
    mean = sum(recent) / len(recent) if recent else step
    assert min(step, max_samples) <= got <= max_samples
    if got < max_samples:
        assert got % step == 0 and got >= mean and (got == step or got - step < mean)


@pytest.mark.parametrize(
    ("certainty", "reference", "percentile", "factor"),
    [
        pytest.param(0.5, [1.0, 2.0, 3.0, 4.0], 0.0, 1.5, id="least-certain-of-its-group"),
        pytest.param(9.0, [1.0, 2.0, 3.0, 4.0], 1.0, 0.5, id="most-certain-of-its-group"),
        pytest.param(2.5, [1.0, 2.0, 3.0, 4.0], 0.5, 1.0, id="median"),
        pytest.param(2.0, [1.0, 2.0, 3.0, 4.0], 0.375, 1.125, id="a-tie-counts-half"),
        pytest.param(3.0, [1.0, 2.0, 3.0], None, 1.0, id="fewer-than-4-certainties"),
        pytest.param(None, [1.0, 2.0, 3.0, 4.0], None, 1.0, id="no-certainty"),
    ],
)
def test_prior_factor_is_one_and_a_half_minus_the_percentile_rank(
    certainty: float | None, reference: list[float], percentile: float | None, factor: float
) -> None:
    prior = difficulty_prior(certainty, reference)
    assert prior.percentile == percentile
    assert prior.factor == pytest.approx(factor)


@given(st.floats(-10, 10), st.lists(st.floats(-10, 10), min_size=4, max_size=64))
def test_prior_factor_stays_within_half_and_one_and_a_half(
    certainty: float, reference: list[float]
) -> None:
    assert 0.5 <= difficulty_prior(certainty, reference).factor <= 1.5


@pytest.mark.parametrize(
    ("pre", "factor", "step", "max_samples", "expected"),
    [
        pytest.param(8, 1.0, 4, 40, 8, id="no-prior"),
        pytest.param(8, 1.5, 4, 40, 12, id="hard"),
        pytest.param(8, 0.5, 4, 40, 4, id="easy"),
        pytest.param(8, 1.125, 4, 40, 12, id="rounds-up"),
        pytest.param(12, 1 + (0.5 - 5 / 6), 4, 40, 8, id="float-error-is-no-extra-step"),
        pytest.param(4, 0.5, 4, 40, 4, id="at-least-step"),
        pytest.param(40, 1.5, 4, 40, 40, id="at-most-max-samples"),
    ],
)
def test_allocation_scales_the_preallocation_and_rounds_up_to_step(
    pre: int, factor: float, step: int, max_samples: int, expected: int
) -> None:
    assert allocation(pre, factor, step=step, max_samples=max_samples) == expected


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        pytest.param([0, 0, 0, 0, 0, 0], 4, id="four-agreeing"),
        pytest.param([0, 1, 0, 0, 0, 0, 0, 1], 7, id="six-to-one"),
        pytest.param([0, None, 0, 0, 0], 5, id="unextractable-answers-do-not-vote"),
        pytest.param([0, 1, 0, 1], None, id="never"),
        pytest.param([], None, id="no-samples"),
    ],
)
def test_asc_stop_point_is_the_first_prefix_where_the_criterion_holds(
    groups: list[int | None], expected: int | None
) -> None:
    assert asc_stop_point(groups, 0.95) == expected


# --- one request --------------------------------------------------------------------------------


def test_a_request_that_settles_on_its_first_batch_draws_one_window() -> None:
    result, sampler = unanimous()
    assert batches(sampler) == [4]
    assert result.answer == "5" and result.votes == {"5": 4}
    assert result.stopped_early
    assert result.details == {
        "group": "family", "preallocation": 4, "allocation": 4, "prior_percentile": None,
        "history_size": 0, "stop_size": 4, "settled": True, "recorded_size": 4,
        "first_window_certainty": None,
    }


def test_a_request_expands_by_step_until_the_asc_criterion_holds() -> None:
    sampler = FakeSampler(answers(*SETTLES_AT_12))  # exactly 12: a 13th would fail the submit
    result = run(sampler)
    assert batches(sampler) == [4, 4, 4]
    assert {priority for _, priority in sampler.submitted} == {0}
    assert result.answer == "1" and result.votes == {"1": 9, "2": 3}  # every sample votes
    assert result.details["stop_size"] == 12 and result.details["settled"]
    assert len(sampler.progress) == 3  # the first window, then each of two expansions
    assert "allocation 4" in sampler.progress[0]
    assert all("expanding by 4" in note for note in sampler.progress[1:])


def test_a_request_that_never_settles_stops_at_max_samples() -> None:
    sampler = FakeSampler(answers(*["1", "2"] * 5))
    result = run(sampler, max_samples=10)
    assert batches(sampler) == [4, 4, 2]
    assert not result.stopped_early and not result.details["settled"]
    assert result.details["stop_size"] == result.details["recorded_size"] == 10
    assert unanimous(max_samples=10)[0].details["preallocation"] == 10  # recorded all the same


def test_the_group_records_where_asc_first_held_not_the_samples_drawn() -> None:
    dsc.GROUPS.record(FAMILY, GroupRecord(12, None))
    result, sampler = unanimous()
    assert batches(sampler) == [12]  # the allocation in one batch, its first window included
    assert result.details["stop_size"] == 12
    assert result.details["recorded_size"] == 4  # 4-0 after four samples


@pytest.mark.parametrize(
    ("certainty", "percentile", "allocated", "drawn"),
    [
        pytest.param(0.5, 0.0, 12, [4, 8], id="less-certain-than-the-group-draws-more"),
        pytest.param(2.5, 0.5, 8, [4, 4], id="as-certain-as-the-group-draws-the-preallocation"),
        pytest.param(9.0, 1.0, 4, [4], id="more-certain-than-the-group-draws-less"),
    ],
)
def test_the_first_windows_certainty_scales_the_allocation(
    certainty: float, percentile: float, allocated: int, drawn: list[int]
) -> None:
    for group_certainty in (1.0, 2.0, 3.0, 4.0):
        dsc.GROUPS.record(FAMILY, GroupRecord(8, group_certainty))
    sampler = FakeSampler(answers(*["5"] * 12, certainty=certainty))
    result = run(sampler)
    assert result.details["preallocation"] == 8
    assert result.details["prior_percentile"] == percentile
    assert result.details["allocation"] == allocated
    assert batches(sampler) == drawn
    assert f"allocation {allocated}" in sampler.progress[0]


def test_a_group_without_four_known_certainties_has_no_prior() -> None:
    for group_certainty in (None, None, 1.0, 2.0, 3.0):
        dsc.GROUPS.record(FAMILY, GroupRecord(8, group_certainty))
    sampler = FakeSampler(answers(*["5"] * 8, certainty=0.5))
    result = run(sampler)
    assert result.details["prior_percentile"] is None
    assert batches(sampler) == [8]


def test_a_failing_sample_aborts_outstanding_and_records_nothing() -> None:
    engine_error = Scripted("", delay=0.01, raises=RuntimeError("engine error"))
    sampler = FakeSampler([*answers("1"), engine_error, *answers("3", "4", hangs=True)])
    with pytest.raises(RuntimeError, match="engine error"):
        run(sampler)
    assert sorted(sampler.aborted) == [2, 3] and sampler.outstanding == []
    assert len(dsc.GROUPS) == 0


def test_a_cancelled_request_records_nothing() -> None:
    sampler = FakeSampler(answers("1", "1", "1", "1", hangs=True))

    async def cancelled() -> None:
        await asyncio.wait_for(run_dsc(sampler, DscOptions()), timeout=0.01)

    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(cancelled())
    assert sorted(sampler.aborted) == [0, 1, 2, 3] and sampler.outstanding == []
    assert len(dsc.GROUPS) == 0


# --- a group's history --------------------------------------------------------------------------


def test_the_second_request_of_a_group_starts_from_the_first_ones_stopping_size() -> None:
    settle_at_12()
    second, sampler = unanimous()
    assert batches(sampler) == [12]
    assert second.details["preallocation"] == 12 and second.details["history_size"] == 1
    third, _ = unanimous()  # sizes 12 and 4: mean 8
    assert third.details["preallocation"] == 8 and third.details["history_size"] == 2
    fourth, _ = unanimous(history=1)  # this request averages only the last size, 4
    assert fourth.details["preallocation"] == 4 and fourth.details["history_size"] == 1


def test_explicit_groups_do_not_share_history() -> None:
    settle_at_12(group="a")
    assert unanimous(group="b")[0].details["preallocation"] == 4
    result, _ = unanimous(group="a")
    assert result.details["preallocation"] == 12 and result.details["group"] == "a"


def test_the_default_group_is_the_samplers_family() -> None:
    settle_at_12(family="model:system-a")
    other, _ = unanimous(family="model:system-b")
    same, _ = unanimous(family="model:system-a")
    assert other.details["preallocation"] == 4
    assert same.details["preallocation"] == 12 and same.details["group"] == "family"


def test_an_explicit_group_overrides_the_family() -> None:
    settle_at_12(family="model:system-a", group="shared")
    assert unanimous(family="model:system-b", group="shared")[0].details["preallocation"] == 12
    assert unanimous(family="model:system-a")[0].details["preallocation"] == 4


def test_an_explicit_group_named_like_a_family_does_not_share_its_history() -> None:
    settle_at_12()
    assert unanimous(group="fake:family")[0].details["preallocation"] == 4


def test_the_least_recently_used_group_is_forgotten_beyond_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dsc, "GROUPS", GroupStore(max_groups=2))
    for group in ("a", "b", "c"):
        settle_at_12(group=group)
    assert len(dsc.GROUPS) == 2 and ("group", "a") not in dsc.GROUPS
    assert unanimous(group="c")[0].details["preallocation"] == 12
    assert unanimous(group="a")[0].details["preallocation"] == 4  # forgotten: starts afresh


def test_reading_a_group_keeps_it_from_being_evicted() -> None:
    store = GroupStore(max_groups=2)
    store.record(("group", "a"), GroupRecord(8, None))
    store.record(("group", "b"), GroupRecord(8, None))
    assert store.records(("group", "a")) == (GroupRecord(8, None),)
    store.record(("group", "c"), GroupRecord(8, None))
    assert ("group", "a") in store and ("group", "b") not in store


def test_a_group_keeps_only_its_most_recent_records() -> None:
    store = GroupStore(records_per_group=2)
    for size in (4, 8, 12):
        store.record(("group", "a"), GroupRecord(size, None))
    assert [r.stop_size for r in store.records(("group", "a"))] == [8, 12]
    assert store.records(("group", "unknown")) == ()
    assert ("group", "unknown") not in store  # reading creates nothing


# --- options and registration -------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [{"group": ""}, {"group": "g" * 129}, {"max_samples": 65}, {"step": 0}, {"step": 17},
     {"history": 0}, {"history": 257}, {"confidence": 0.5}, {"confidence": 1.0}],
)
def test_out_of_bounds_options_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        DscOptions(**options)


def test_dsc_is_registered_with_max_samples_as_its_budget() -> None:
    assert REGISTRY["dsc"] is DSC
    options = DSC.parse_options({"max_samples": 24, "group": "g" * 128})
    assert options.sample_budget() == 24 and options.budget_option() == "max_samples"
