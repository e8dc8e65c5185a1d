"""The scripted fake sampler itself, part 1: strategy tests are only as good as the double they
run on, so it must script by prompt and record what was asked as the real sampler is asked
(part 2, test_fake_sampler_streams.py: token streams for watchers, aborts, errors)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from strategies.base import Message, Sample
from tests.unit.fake_sampler import (
    FakeSampler,
    Scripted,
    SubmitCall,
    answers,
    draw,
    run_async,
    word_pieces,
)

CRITIQUE = (Message("assistant", "The answer is 4."), Message("user", "Critique your answer."))
REFINE = (Message("assistant", "The answer is 4."), Message("user", "Improve your answer."))


def texts(samples: Sequence[Sample]) -> list[str]:
    return [sample.text for sample in samples]


# Scripts by prompt


def test_the_default_script_answers_the_requests_own_conversation_in_order() -> None:
    sampler = FakeSampler([Scripted("a"), Scripted("b"), Scripted("c")])

    async def body() -> tuple[list[Sample], list[Sample]]:
        return await draw(sampler, 2), await draw(sampler, 1)

    first, second = run_async(body)
    assert texts(first) == ["a", "b"] and texts(second) == ["c"]


def test_a_continuation_is_answered_from_its_own_script_in_order() -> None:
    sampler = FakeSampler(
        [Scripted("draft")],
        continuations={CRITIQUE: [Scripted("critique 1"), Scripted("critique 2")],
                       REFINE: [Scripted("refined")]},
    )

    async def body() -> list[str]:
        return texts([
            *await draw(sampler, messages=CRITIQUE),
            *await draw(sampler),
            *await draw(sampler, messages=list(REFINE)),  # any sequence of messages
            *await draw(sampler, messages=CRITIQUE),
        ])

    assert run_async(body) == ["critique 1", "draft", "refined", "critique 2"]


def test_a_string_key_matches_the_content_of_the_last_extra_message() -> None:
    sampler = FakeSampler(continuations={"Critique your answer.": [Scripted("critique")]})

    async def body() -> list[Sample]:
        return await draw(sampler, messages=CRITIQUE)

    assert texts(run_async(body)) == ["critique"]


def test_a_predicate_key_matches_the_continuations_it_accepts() -> None:
    def asks_to_improve(messages: tuple[Message, ...]) -> bool:
        return "Improve" in messages[-1].content

    sampler = FakeSampler(continuations={asks_to_improve: [Scripted("r1"), Scripted("r2")]})

    async def body() -> list[Sample]:
        other = (Message("user", "Please Improve it."),)
        return [*await draw(sampler, messages=REFINE), *await draw(sampler, messages=other)]

    assert texts(run_async(body)) == ["r1", "r2"]  # one script, consumed in order by both


def test_an_exact_continuation_wins_over_its_last_content_and_predicates() -> None:
    sampler = FakeSampler(continuations={
        CRITIQUE: [Scripted("exact")],
        "Critique your answer.": [Scripted("last content")],
        lambda messages: True: [Scripted("predicate")],
    })

    async def body() -> list[Sample]:
        elsewhere = (Message("user", "Critique your answer."),)
        return [*await draw(sampler, messages=CRITIQUE),
                *await draw(sampler, messages=elsewhere),
                *await draw(sampler, messages=REFINE)]

    assert texts(run_async(body)) == ["exact", "last content", "predicate"]


def test_two_matching_predicates_fail_the_submit() -> None:
    sampler = FakeSampler(continuations={lambda m: True: [Scripted("a")],
                                         lambda m: len(m) == 2: [Scripted("b")]})

    async def body() -> None:
        sampler.submit(1, messages=CRITIQUE)

    with pytest.raises(AssertionError, match="2 predicates match"):
        run_async(body)


def test_an_unscripted_prompt_fails_the_submit_naming_the_prompt() -> None:
    sampler = FakeSampler([Scripted("draft")], continuations={REFINE: [Scripted("refined")]})

    async def body() -> None:
        sampler.submit(1, messages=CRITIQUE)

    with pytest.raises(AssertionError) as raised:
        run_async(body)
    message = str(raised.value)
    assert "'Critique your answer.'" in message and "0 samples were scripted" in message
    assert sampler.calls == [] and sampler.outstanding == []


@pytest.mark.parametrize(
    ("messages", "named"),
    [((), "the request's own conversation"), (CRITIQUE, "'Critique your answer.'")],
)
def test_asking_past_the_end_of_a_script_fails_saying_how_many_were_scripted(
    messages: tuple[Message, ...], named: str
) -> None:
    sampler = FakeSampler(answers("1", "2"), continuations={CRITIQUE: answers("1", "2")})

    async def body() -> None:
        await draw(sampler, 1, messages=messages)
        sampler.submit(2, messages=messages)

    with pytest.raises(AssertionError) as raised:
        run_async(body)
    message = str(raised.value)
    assert named in message
    assert "asked for 2 more sample(s)" in message and "after 1" in message
    assert "2 were scripted" in message
    assert sampler.submitted == [(0, 0)]  # the refused submit started nothing


def test_the_requests_own_conversation_cannot_also_be_a_continuation_key() -> None:
    with pytest.raises(ValueError, match="positional `script`"):
        FakeSampler(continuations={(): [Scripted("a")]})


# What was asked


def test_every_submit_is_recorded_with_what_it_passed() -> None:
    watchable = Scripted("c", token_certainty=(1.0,))
    sampler = FakeSampler(answers("1", "2"), continuations={CRITIQUE: [watchable] * 2})
    schema = {"type": "object", "properties": {"score": {"type": "integer"}}}

    def watch(values: Sequence[float]) -> bool:
        return False

    async def body() -> None:
        await draw(sampler, 2)
        await draw(sampler, 2, messages=CRITIQUE, max_tokens=256, temperature=0.7,
                   json_schema=schema, priority=1, watch=watch)

    run_async(body)
    assert sampler.calls == [
        SubmitCall(indices=(0, 1), messages=(), max_tokens=None, temperature=None,
                   json_schema=None, priority=0, watch=None),
        SubmitCall(indices=(2, 3), messages=CRITIQUE, max_tokens=256, temperature=0.7,
                   json_schema=schema, priority=1, watch=watch),
    ]
    assert [call.count for call in sampler.calls] == [2, 2]
    assert [call.watched for call in sampler.calls] == [False, True]
    assert sampler.call_of(3).temperature == 0.7


def test_submitted_lists_each_sample_with_its_priority() -> None:
    sampler = FakeSampler(answers("1", "2", "3"))

    async def body() -> None:
        await draw(sampler, 1)
        await draw(sampler, 2, priority=1)

    run_async(body)
    assert sampler.submitted == [(0, 0), (1, 1), (2, 1)]


def test_indices_are_global_over_every_submit_and_conversation() -> None:
    sampler = FakeSampler(answers("1", "2", "3"), continuations={CRITIQUE: answers("4", "5")})

    async def body() -> list[Sample]:
        return [*await draw(sampler, 2), *await draw(sampler, 1, messages=CRITIQUE),
                *await draw(sampler, 1), *await draw(sampler, 1, messages=CRITIQUE)]

    samples = run_async(body)
    assert [s.index for s in samples] == [0, 1, 2, 3, 4]
    assert texts(samples) == texts(answers("1", "2", "4", "3", "5"))
    assert sorted(sampler.finished) == [0, 1, 2, 3, 4]


# Whole samples


def test_without_a_watcher_a_sample_comes_back_whole() -> None:
    step = Scripted("The answer is 4.", token_certainty=(1.0, 2.0, 3.0, 6.0), logprob=-2.0)

    async def body() -> list[Sample]:
        return await draw(FakeSampler([step]))

    (sample,) = run_async(body)
    assert sample.text == "The answer is 4." and sample.token_ids == (0, 1, 2, 3)
    assert sample.token_certainty == (1.0, 2.0, 3.0, 6.0)
    assert sample.certainty == 3.0 and sample.lowest_group_certainty == 3.0
    assert sample.finish_reason == "stop" and not sample.stopped_by_watcher
    assert sample.cumulative_logprob == -2.0


def test_a_sample_without_token_certainty_keeps_its_scripted_values() -> None:
    step = Scripted("The answer is 4.", 2.5, tokens=10, logprob=-5.0, finish_reason="length",
                    entropy=0.3, lowest_group_certainty=1.5)

    async def body() -> list[Sample]:
        return await draw(FakeSampler([step]))

    (sample,) = run_async(body)
    assert sample.certainty == 2.5 and sample.num_tokens == 10 and sample.mean_logprob == -0.5
    assert sample.finish_reason == "length" and sample.token_certainty == ()
    assert sample.entropy == 0.3 and sample.lowest_group_certainty == 1.5


def test_by_default_a_sample_has_one_token_per_word() -> None:
    assert Scripted("Let me think. The answer is 4.").num_tokens == 7
    assert word_pieces(" a  b\nc ") == (" a  ", "b\n", "c ")


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [({"certainty": 1.0, "token_certainty": (1.0, 2.0)}, "not both"),
     ({"token_certainty": (1.0, 2.0, 3.0)}, "2 pieces but token_certainty has 3 values"),
     ({"token_certainty": (1.0, 2.0), "tokens": 5}, "tokens=5"),
     ({"pieces": ("a", "b")}, "do not join")],
)
def test_inconsistent_steps_are_refused_when_scripted(
    fields: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        Scripted("two words", **fields)
