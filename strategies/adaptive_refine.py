"""Adaptive refinement: aggregate easy questions, refine only hard ones (MAgICoRe, Chen et al.
2024, "MAgICoRe: Multi-Agent, Iterative, Coarse-to-Fine Refinement for Reasoning").

Draw `k` samples as self-consistency does. When the leading answer holds at least
`easy_agreement` of them, the question is easy: the vote is the answer and nothing more is
spent. Otherwise it is hard: the `refine_top` most certain distinct answers are each refined by
the refinement loop (`strategies.refine_loop`), all loops in parallel and batched in the
engine, and the final vote runs over the original samples and each loop's best iterate when
that is a new draft (a loop that kept its starting sample adds no second vote for it).

MAgICoRe weights refined solutions with a reward model; Refinery has none, so a refined draft
votes with its self-certainty relative to the original samples' mean (Kang et al. 2025): as
certain as an average sample counts as one vote, more certain counts more.
"""

from __future__ import annotations

import asyncio

from pydantic import Field

from strategies.answers import AnswerGroups, extract_answer, parse_answer_format
from strategies.base import Result, Sample, Sampler, Strategy, register
from strategies.refine_loop import RefineLoopOptions, RefineOutcome, run_refine_loop
from strategies.voting import majority_vote, weighted_vote

__all__ = ["AdaptiveRefineOptions", "refined_weight", "run_adaptive_refine"]


class AdaptiveRefineOptions(RefineLoopOptions):
    k: int = Field(default=5, ge=2, le=32, description="Samples drawn first, as self-consistency.")
    easy_agreement: float = Field(
        default=0.8, gt=0.0, le=1.0,
        description="Share of the k samples the leading answer needs for the question to be "
        "easy (answered by the vote, no refinement).",
    )
    refine_top: int = Field(
        default=2, ge=1, le=4,
        description="Hard questions: how many of the most certain distinct answers to refine.",
    )

    def sample_budget(self) -> int:
        return self.k + self.refine_top * self.loop_budget()

    def budget_option(self) -> str:
        return "k"

    def parallel_samples(self) -> int:
        return self.k


def refined_weight(refined: Sample, originals: list[Sample]) -> float:
    """A refined draft's vote: its certainty over the originals' mean certainty (1 when either
    is unknown or the mean is not positive)."""
    known = [s.certainty for s in originals if s.certainty is not None]
    mean = sum(known) / len(known) if known else None
    if refined.certainty is None or mean is None or mean <= 0:
        return 1.0
    return max(refined.certainty, 0.0) / mean


def _starts(samples: list[Sample], groups: list[int | None], count: int) -> list[Sample]:
    """The most certain sample of each distinct answer, most certain first, `count` of them;
    when no sample states an answer, the most certain sample."""
    order = sorted(range(len(samples)), key=lambda i: (
        samples[i].certainty if samples[i].certainty is not None else float("-inf"), -i),
        reverse=True)
    starts: list[Sample] = []
    seen: set[int] = set()
    for i in order:
        group = groups[i]
        if group is not None and group not in seen:
            seen.add(group)
            starts.append(samples[i])
    return starts[:count] or [samples[order[0]]]


async def run_adaptive_refine(sampler: Sampler, options: AdaptiveRefineOptions) -> Result:
    spec = parse_answer_format(options.answer_format)
    originals = list(await asyncio.gather(*sampler.submit(options.k)))
    answers = [extract_answer(sample.text, spec) for sample in originals]
    book = AnswerGroups()
    groups = [book.add(answer) for answer in answers]
    vote = majority_vote(originals, groups)
    share = vote.tally[vote.group] / options.k if vote.group is not None else 0.0
    details = {"route": "easy", "agreement": round(share, 4), "mode": options.mode}
    if share >= options.easy_agreement:
        return Result(
            chosen=originals[vote.winner], samples=tuple(originals), answers=tuple(answers),
            answer=book.representative(vote.group) if vote.group is not None else None,
            votes={book.representative(g): n for g, n in vote.tally.items()},
            details=details, route="easy",
        )

    starts = _starts(originals, groups, options.refine_top)
    sampler.report_progress(
        f"route=hard agreement={share:.2f}: refining {len(starts)} answer(s)")
    outcomes: list[RefineOutcome] = list(await asyncio.gather(*(
        run_refine_loop(sampler, options, spec, first=start, label=f"refinement {n} ")
        for n, start in enumerate(starts, start=1))))
    # A loop whose best iterate is its starting sample produced nothing new: that sample has
    # already voted, and does not vote twice.
    refined = [outcome.best for outcome in outcomes if outcome.chosen > 0]
    pool = originals + [step.draft for step in refined]
    pool_answers = answers + [step.answer for step in refined]
    pool_groups = groups + [book.add(step.answer) for step in refined]
    weights = [1.0] * len(originals) + [refined_weight(s.draft, originals) for s in refined]
    final = weighted_vote(pool, pool_groups, weights)
    order = sorted(range(len(pool)), key=lambda i: pool[i].index)
    details.update(route="hard", refinements=[
        {"from_answer": outcome.steps[0].answer, "from_index": start.index,
         "weight": round(refined_weight(outcome.best.draft, originals), 4)
         if outcome.chosen > 0 else None,
         **outcome.report(options.return_candidates)}
        for start, outcome in zip(starts, outcomes, strict=True)])
    return Result(
        chosen=pool[final.winner],
        samples=tuple(pool[i] for i in order),
        answers=tuple(pool_answers[i] for i in order),
        answer=book.representative(final.group) if final.group is not None else None,
        votes={book.representative(g): round(w, 4) for g, w in final.tally.items()},
        details=details,
        refine_iterations=tuple(outcome.iterations for outcome in outcomes),
        route="hard",
    )


ADAPTIVE_REFINE = register(
    Strategy(
        name="adaptive_refine",
        description="Self-consistency on easy questions; on hard ones (low agreement) refine "
        "the most certain distinct answers and vote again, refined drafts weighted by "
        "certainty (MAgICoRe-style routing).",
        options=AdaptiveRefineOptions,
        run=run_adaptive_refine,
    )
)
