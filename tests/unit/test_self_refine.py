"""The refinement loop and `self_refine` on a scripted sampler: when it stops, what each
sub-request sees, which iterate it returns, and what it may spend."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import ValidationError

from strategies.base import Message, Result
from strategies.refine_loop import (
    CRITIC_PROMPT,
    IOE_PROMPT,
    REFINE_PROMPT_NO_FEEDBACK,
    VERDICT_SCHEMA,
)
from strategies.self_refine import SelfRefineOptions, run_self_refine
from tests.unit.fake_sampler import FakeSampler, Scripted


def critic(verdict: str, feedback: str = "") -> Scripted:
    return Scripted(json.dumps({"verdict": verdict, "feedback": feedback}), certainty=1.0)


def draft(answer: str, certainty: float) -> Scripted:
    return Scripted(f"Work. The answer is {answer}.", certainty=certainty)


def is_rewrite(messages: tuple[Message, ...]) -> bool:
    return messages[-1].content.startswith("A reviewer found") or \
        messages[-1].content == REFINE_PROMPT_NO_FEEDBACK


def run(sampler: FakeSampler, **options: object) -> Result:
    result = asyncio.run(run_self_refine(sampler, SelfRefineOptions(**options)))
    assert sampler.outstanding == []
    return result


def critic_calls(sampler: FakeSampler):
    return [c for c in sampler.calls if c.messages and c.messages[-1].content == CRITIC_PROMPT]


def test_a_kept_first_draft_ends_the_loop_after_one_critique() -> None:
    sampler = FakeSampler([draft("5", 2.0)], {CRITIC_PROMPT: [critic("keep")]})
    result = run(sampler)
    assert result.details["stopped_by"] == "verdict"
    assert result.answer == "5" and result.refine_iterations == (0,)
    assert [step["verdict"] for step in result.details["iterations"]] == ["keep"]
    assert len(sampler.calls) == 2 and result.stopped_early


def test_no_certainty_gain_stops_and_the_better_earlier_draft_is_returned() -> None:
    sampler = FakeSampler(
        [draft("5", 3.0)],
        {CRITIC_PROMPT: [critic("revise", "the sum is wrong")], is_rewrite: [draft("6", 2.0)]})
    result = run(sampler, max_iterations=3)
    assert result.details["stopped_by"] == "certainty"
    assert result.answer == "5" and result.chosen.index == 0  # not blindly the last draft
    assert result.details["chosen_step"] == 0
    assert result.refine_iterations == (1,)


def test_a_gain_below_min_gain_stops_yet_the_more_certain_draft_is_returned() -> None:
    sampler = FakeSampler([draft("5", 3.0)],
                          {CRITIC_PROMPT: [critic("revise", "x")], is_rewrite: [draft("6", 3.2)]})
    result = run(sampler, min_gain=0.5)
    assert result.details["stopped_by"] == "certainty" and result.answer == "6"


def test_the_critic_sees_only_the_question_and_the_current_draft() -> None:
    sampler = FakeSampler(
        [draft("1", 1.0)],
        {CRITIC_PROMPT: [critic("revise", "FEEDBACK-ONE"), critic("revise", "FEEDBACK-TWO"),
                         critic("keep")],
         is_rewrite: [draft("2", 2.0), draft("3", 3.0)]})
    result = run(sampler, max_iterations=3)
    assert result.answer == "3" and result.details["stopped_by"] == "verdict"
    critics = critic_calls(sampler)
    assert len(critics) == 3
    for call, text in zip(critics, ["answer is 1.", "answer is 2.", "answer is 3."], strict=True):
        assert len(call.messages) == 2  # the draft and the instruction: no earlier turns
        assert call.messages[0].role == "assistant" and call.messages[0].content.endswith(text)
        assert "FEEDBACK" not in call.messages[0].content + call.messages[1].content
        assert call.json_schema == VERDICT_SCHEMA
        assert call.temperature == 0.7 and call.max_tokens == 256


def test_the_rewrite_sees_the_draft_and_its_feedback() -> None:
    sampler = FakeSampler(
        [draft("1", 1.0)],
        {CRITIC_PROMPT: [critic("revise", "carry the one"), critic("keep")],
         is_rewrite: [draft("2", 2.0)]})
    run(sampler, critic_temperature=0.2, critic_max_tokens=64)
    (rewrite,) = [c for c in sampler.calls if c.messages and is_rewrite(c.messages)]
    assert rewrite.messages[0].content.endswith("answer is 1.")
    assert "carry the one" in rewrite.messages[1].content
    assert rewrite.json_schema is None and rewrite.temperature is None  # the request's own
    assert all(c.temperature == 0.2 and c.max_tokens == 64 for c in critic_calls(sampler))


def test_an_unreadable_critique_rewrites_without_feedback() -> None:
    sampler = FakeSampler(
        [draft("1", 1.0)],
        {CRITIC_PROMPT: [Scripted('{"verdict": "rev', certainty=0.1), critic("keep")],
         REFINE_PROMPT_NO_FEEDBACK: [draft("2", 2.0)]})
    result = run(sampler)
    assert result.details["iterations"][0]["verdict"] is None
    assert result.answer == "2"


def test_fixed_runs_every_iteration_even_when_kept() -> None:
    sampler = FakeSampler(
        [draft("1", 3.0)],
        {CRITIC_PROMPT: [critic("keep")] * 2,
         is_rewrite: [draft("2", 1.0), draft("3", 2.0)]})
    result = run(sampler, stop="fixed", max_iterations=2)
    assert result.details["stopped_by"] == "max_iterations" and not result.stopped_early
    assert result.refine_iterations == (2,)
    assert result.answer == "1"  # the most certain iterate


def test_ioe_asks_the_writer_itself_and_stops_when_it_keeps_its_answer() -> None:
    sampler = FakeSampler(
        [draft("4", 1.0)],
        {IOE_PROMPT: [draft("5", 2.0), Scripted("I am confident: the answer is 5.", 2.5)]})
    result = run(sampler, mode="ioe", max_iterations=4)
    assert critic_calls(sampler) == []
    assert [s["verdict"] for s in result.details["iterations"]] == ["revise", "keep", None]
    assert result.details["stopped_by"] == "verdict" and result.answer == "5"


def test_several_samples_per_step_keep_the_most_certain_draft() -> None:
    sampler = FakeSampler(
        [draft("1", 1.0), draft("2", 4.0), draft("3", 2.0)], {CRITIC_PROMPT: [critic("keep")]})
    result = run(sampler, samples_per_step=3)
    assert [c.count for c in sampler.calls] == [3, 1]
    assert result.answer == "2" and len(result.samples) == 3


def test_vote_selection_returns_the_majority_answer_over_the_iterates() -> None:
    sampler = FakeSampler(
        [draft("7", 1.0)],
        {CRITIC_PROMPT: [critic("revise", "a"), critic("revise", "b")],
         is_rewrite: [draft("9", 5.0), draft("7", 6.0)]})
    result = run(sampler, select="vote", stop="verdict", max_iterations=2)
    assert result.answer == "7" and result.votes == {"7": 2, "9": 1}
    assert result.chosen.certainty == 6.0  # the most certain draft of the winning answer


def test_iterations_report_texts_only_with_return_candidates() -> None:
    script = {CRITIC_PROMPT: [critic("revise", "why"), critic("keep")],
              is_rewrite: [draft("2", 2.0)]}
    plain = run(FakeSampler([draft("1", 1.0)], script))
    assert "draft" not in plain.details["iterations"][0]
    full = run(FakeSampler([draft("1", 1.0)], script), return_candidates=True)
    assert full.details["iterations"][0]["feedback"] == "why"
    assert full.details["iterations"][1]["draft"].endswith("answer is 2.")


def test_progress_is_reported_per_step() -> None:
    sampler = FakeSampler([draft("1", 1.0)],
                          {CRITIC_PROMPT: [critic("revise", "x"), critic("keep")],
                           is_rewrite: [draft("2", 2.0)]})
    run(sampler)
    assert sampler.progress[0].startswith("step 1 verdict=revise certainty=2.000")
    assert sampler.progress[-1] == "step 2 verdict=keep: stop"


@pytest.mark.parametrize("samples_per_step", [1, 3])
@pytest.mark.parametrize("mode", ["critique", "ioe"])
def test_the_sample_budget_bounds_what_the_loop_can_spend(mode: str, samples_per_step: int) -> None:
    options = SelfRefineOptions(mode=mode, stop="fixed", max_iterations=3,
                                samples_per_step=samples_per_step)
    rewrites = [draft(str(i), float(i)) for i in range(3 * samples_per_step)]
    sampler = FakeSampler([draft("0", 0.5)] * samples_per_step,
                          {CRITIC_PROMPT: [critic("revise", "x")] * 3, is_rewrite: rewrites,
                           IOE_PROMPT: rewrites})
    asyncio.run(run_self_refine(sampler, options))
    assert sum(call.count for call in sampler.calls) == options.sample_budget()


@pytest.mark.parametrize(("option", "value"), [("max_iterations", 0), ("max_iterations", 9),
                                               ("samples_per_step", 9), ("min_gain", -1),
                                               ("mode", "debate"), ("stop", "never"),
                                               ("select", "last")])
def test_options_are_bounded(option: str, value: object) -> None:
    with pytest.raises(ValidationError) as exc:
        SelfRefineOptions(**{option: value})
    assert exc.value.errors()[0]["loc"] == (option,)
