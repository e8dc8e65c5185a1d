"""The scripted fake sampler itself, part 2: it streams token by token to watchers, and aborts
and fails samples, as the real sampler does (part 1, test_fake_sampler.py: scripts by prompt
and recorded calls)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies.base import Sample
from tests.unit.fake_sampler import FakeSampler, Scripted, answers, draw, run_async

# Watchers


def stop_after(tokens: int, seen: list[tuple[float, ...]]) -> Callable[[Sequence[float]], bool]:
    """A watcher that records what it is shown and stops at the given token."""

    def watch(values: Sequence[float]) -> bool:
        seen.append(tuple(values))
        return len(values) >= tokens

    return watch


def test_the_watcher_sees_the_certainties_so_far_after_each_token() -> None:
    seen: list[tuple[float, ...]] = []
    step = Scripted("a b c", token_certainty=(0.5, 0.25, 1.0))

    async def body() -> list[Sample]:
        return await draw(FakeSampler([step]), watch=stop_after(99, seen))

    (sample,) = run_async(body)
    assert seen == [(0.5,), (0.5, 0.25), (0.5, 0.25, 1.0)]
    assert sample == step.sample(0)  # a watcher that never stops leaves the sample whole


def test_a_watcher_that_says_stop_cuts_the_sample_at_that_token() -> None:
    seen: list[tuple[float, ...]] = []
    step = Scripted("Let me think. The answer is 4.", logprob=-6.0,
                    token_certainty=(4.0, 2.0, 0.5, 9.0, 9.0, 9.0, 9.0))
    sampler = FakeSampler([step])

    async def body() -> list[Sample]:
        return await draw(sampler, watch=stop_after(3, seen))

    (sample,) = run_async(body)
    assert seen == [(4.0,), (4.0, 2.0), (4.0, 2.0, 0.5)]  # not called after it said stop
    assert sample.stopped_by_watcher and sample.finish_reason == "terminated"
    assert sample.text == "Let me think. " and sample.token_ids == (0, 1, 2)
    assert sample.token_certainty == (4.0, 2.0, 0.5)
    assert sample.certainty == pytest.approx(6.5 / 3)
    assert sample.lowest_group_certainty == pytest.approx(6.5 / 3)
    assert sample.mean_logprob == pytest.approx(-6.0 / 7)  # the mean per token scripted
    assert sampler.stopped == [0] and sampler.finished == [0] and sampler.aborted == []


@given(st.lists(st.floats(0.0, 20.0), min_size=1, max_size=12), st.data())
def test_a_cut_sample_is_exactly_what_its_watcher_saw(
    values: list[float], data: st.DataObject
) -> None:
    stop_at = data.draw(st.integers(1, len(values)))
    words = tuple(f"w{i} " for i in range(len(values)))
    step = Scripted("".join(words), token_certainty=tuple(values))
    last_seen: list[tuple[float, ...]] = []

    async def body() -> list[Sample]:
        return await draw(FakeSampler([step]), watch=stop_after(stop_at, last_seen))

    (sample,) = run_async(body)
    assert sample.token_certainty == last_seen[-1] == tuple(values[:stop_at])
    assert sample.text == "".join(words[:stop_at]) and sample.num_tokens == stop_at
    assert sample.certainty == pytest.approx(sum(values[:stop_at]) / stop_at)


def test_explicit_pieces_say_where_the_text_is_cut() -> None:
    step = Scripted("x = 42", pieces=("x", " =", " 4", "2"), token_certainty=(1.0,) * 4)

    async def body() -> list[Sample]:
        return await draw(FakeSampler([step]), watch=stop_after(3, []))

    (sample,) = run_async(body)
    assert sample.text == "x = 4"


def test_each_sample_of_a_watched_submit_is_watched_on_its_own() -> None:
    lengths: list[int] = []

    def stop_when_unsure(values: Sequence[float]) -> bool:
        lengths.append(len(values))
        return values[-1] < 1.0

    script = [Scripted("a b c", token_certainty=(2.0, 0.5, 2.0)),
              Scripted("d e", token_certainty=(2.0, 2.0))]

    async def body() -> list[Sample]:
        return await draw(FakeSampler(script), 2, watch=stop_when_unsure)

    cut, whole = run_async(body)
    assert (cut.text, cut.stopped_by_watcher) == ("a b ", True)
    assert (whole.text, whole.stopped_by_watcher) == ("d e", False)
    assert sorted(lengths) == [1, 1, 2, 2]


def test_a_watcher_for_a_sample_without_token_certainty_fails_the_submit() -> None:
    sampler = FakeSampler([Scripted("The answer is 4.", 2.0)])

    async def body() -> None:
        sampler.submit(1, watch=lambda values: False)

    with pytest.raises(AssertionError, match="no token_certainty"):
        run_async(body)
    assert sampler.calls == []


# Aborts and failures


def test_abort_outstanding_cancels_hanging_samples_and_records_them() -> None:
    sampler = FakeSampler([*answers("1"), *answers("2", "3", hangs=True)])

    async def body() -> Sample:
        first, *_ = sampler.submit(3)
        sample = await first
        assert sampler.outstanding == [1, 2]
        await sampler.abort_outstanding()
        return sample

    assert run_async(body).index == 0
    assert sampler.outstanding == [] and sorted(sampler.aborted) == [1, 2]
    assert sampler.finished == [0]


def test_an_abort_between_tokens_ends_the_stream_there() -> None:
    seen: list[tuple[float, ...]] = []
    step = Scripted("a b c d", token_certainty=(1.0,) * 4, token_delay=0.02)
    sampler = FakeSampler([step])

    async def body() -> None:
        sampler.submit(1, watch=stop_after(99, seen))
        await asyncio.sleep(0.05)
        await sampler.abort_outstanding()

    run_async(body)
    assert sampler.aborted == [0] and sampler.finished == []
    assert 1 <= len(seen) < 4


def test_a_scripted_error_is_raised_by_its_sample() -> None:
    sampler = FakeSampler([Scripted("", delay=0.01, raises=RuntimeError("engine error"))])

    async def body() -> list[Sample]:
        return await draw(sampler)

    with pytest.raises(RuntimeError, match="engine error"):
        run_async(body)
    assert sampler.finished == [] and sampler.aborted == []
