"""`adaptive_refine` on a scripted sampler: the easy/hard route at the agreement threshold,
which answers get refined, and the certainty-weighted final vote. Plus the server caps that
bound every refinement request."""

from __future__ import annotations

import asyncio
import json

import pytest

from server.api.strategy_selection import ServerCaps, resolve_strategy
from server.exceptions import InvalidRequest
from strategies import PRESETS
from strategies.adaptive_refine import AdaptiveRefineOptions, refined_weight, run_adaptive_refine
from strategies.base import Message, Result, Sample
from strategies.refine_loop import CRITIC_PROMPT
from tests.unit.fake_sampler import FakeSampler, Scripted


def said(answer: str, certainty: float) -> Scripted:
    return Scripted(f"So the answer is {answer}.", certainty=certainty)


def critic(verdict: str, feedback: str = "") -> Scripted:
    return Scripted(json.dumps({"verdict": verdict, "feedback": feedback}), certainty=1.0)


def rewriting(answer: str):
    """A predicate key: the rewrite of the draft that said `answer`."""
    def matches(messages: tuple[Message, ...]) -> bool:
        return (messages[-1].content.startswith("A reviewer found")
                and messages[0].content.endswith(f"answer is {answer}."))
    return matches


def run(sampler: FakeSampler, **options: object) -> Result:
    result = asyncio.run(run_adaptive_refine(sampler, AdaptiveRefineOptions(**options)))
    assert sampler.outstanding == []
    return result


def test_agreement_at_the_threshold_is_easy_and_spends_nothing_more() -> None:
    sampler = FakeSampler([said("4", 1.0)] * 4 + [said("5", 9.0)])
    result = run(sampler, k=5, easy_agreement=0.8)
    assert result.route == "easy" and result.answer == "4"
    assert result.details["agreement"] == 0.8 and result.refine_iterations == ()
    assert len(sampler.calls) == 1


def test_agreement_below_the_threshold_refines_the_most_certain_distinct_answers() -> None:
    originals = [said("4", 1.0), said("4", 1.5), said("4", 1.2), said("5", 3.0), said("6", 2.0)]
    sampler = FakeSampler(originals, {
        # Each loop: critic says revise, the rewrite gains certainty, the critic then keeps it.
        CRITIC_PROMPT: [critic("revise", "check"), critic("revise", "check"),
                        critic("keep"), critic("keep")],
        rewriting("5"): [said("7", 6.0)],
        rewriting("6"): [said("7", 5.0)],
    })
    result = run(sampler, k=5, refine_top=2)
    assert result.route == "hard" and result.details["agreement"] == 0.6
    starts = [r["from_answer"] for r in result.details["refinements"]]
    assert starts == ["5", "6"]  # the most certain distinct answers, most certain first
    # Mean original certainty 1.74: the refined 7s weigh 6/1.74 + 5/1.74 ≈ 6.3 > three 4s.
    assert result.answer == "7" and result.chosen.certainty == 6.0
    assert result.votes["4"] == 3 and result.votes["7"] == pytest.approx(11 / 1.74, abs=1e-3)
    assert result.refine_iterations == (1, 1)
    assert sampler.progress[0].startswith("route=hard agreement=0.60")


def test_a_refinement_that_does_not_help_leaves_the_majority_standing() -> None:
    originals = [said("4", 2.0), said("4", 2.0), said("4", 2.0), said("5", 2.5), said("6", 0.5)]
    sampler = FakeSampler(originals, {CRITIC_PROMPT: [critic("keep"), critic("keep")]})
    result = run(sampler, k=5, refine_top=2)
    assert result.route == "hard" and result.answer == "4"
    assert result.refine_iterations == (0, 0)
    assert result.votes == {"4": 3, "5": 1, "6": 1}  # a kept start does not vote twice
    assert [r["weight"] for r in result.details["refinements"]] == [None, None]
    assert len(result.samples) == 5


def test_refined_weight_is_certainty_relative_to_the_original_mean() -> None:
    def sample(certainty: float | None) -> Sample:
        return Sample(index=0, text="", token_ids=(1,), finish_reason="stop",
                      certainty=certainty)

    originals = [sample(1.0), sample(3.0)]
    assert refined_weight(sample(4.0), originals) == 2.0
    assert refined_weight(sample(None), originals) == 1.0
    assert refined_weight(sample(4.0), [sample(None)]) == 1.0


def test_the_budget_covers_k_and_every_loop() -> None:
    options = AdaptiveRefineOptions(k=5, refine_top=2, max_iterations=3)
    assert options.sample_budget() == 5 + 2 * 3 * 2
    assert options.budget_option() == "k" and options.parallel_samples() == 5


CAPS = ServerCaps(max_samples=64, max_refine_iterations=8)


@pytest.mark.parametrize("preset", ["refine", "adaptive"])
def test_refinement_presets_resolve(preset: str) -> None:
    resolved = resolve_strategy({"model": "m", "strategy": preset}, PRESETS, CAPS)
    assert resolved is not None and resolved.preset == preset


def test_the_iteration_cap_is_a_400_naming_max_iterations() -> None:
    body = {"strategy": {"name": "self_refine", "max_iterations": 5}}
    with pytest.raises(InvalidRequest) as error:
        resolve_strategy(body, PRESETS, ServerCaps(max_samples=64, max_refine_iterations=4))
    assert error.value.param == "strategy.max_iterations"


def test_the_sample_cap_covers_every_sub_request_of_a_refinement() -> None:
    body = {"strategy": {"name": "adaptive_refine", "k": 16, "refine_top": 4,
                         "max_iterations": 8, "samples_per_step": 4}}
    with pytest.raises(InvalidRequest) as error:
        resolve_strategy(body, PRESETS, CAPS)
    assert error.value.param == "strategy.k" and "sub-requests" in error.value.message
