"""Self-refine: draft → judge → rewrite, with confidence-aware stopping (the loop in
`strategies.refine_loop`: Self-Refine, Madaan et al. 2023; If-or-Else, Li et al. 2024).

The response's `strategy.iterations` lists every iterate (answer, certainty, verdict; the draft
and the feedback with `return_candidates`), `stopped_by` says why the loop ended, and the answer
is the best iterate, not the last one.
"""

from __future__ import annotations

from strategies.answers import AnswerGroups, extract_answer, parse_answer_format
from strategies.base import Result, Sampler, Strategy, register
from strategies.refine_loop import RefineLoopOptions, run_refine_loop
from strategies.voting import majority_vote

__all__ = ["SelfRefineOptions", "run_self_refine"]


class SelfRefineOptions(RefineLoopOptions):
    def sample_budget(self) -> int:
        return self.samples_per_step + self.loop_budget()

    def budget_option(self) -> str:
        return "max_iterations"


async def run_self_refine(sampler: Sampler, options: SelfRefineOptions) -> Result:
    spec = parse_answer_format(options.answer_format)
    outcome = await run_refine_loop(sampler, options, spec)
    drafts = sorted(outcome.drafts, key=lambda sample: sample.index)  # beams included
    book = AnswerGroups()
    groups = [book.add(step.answer) for step in outcome.steps]
    tally = majority_vote([step.draft for step in outcome.steps], groups).tally
    best = outcome.best
    return Result(
        chosen=best.draft,
        samples=tuple(drafts),
        answers=tuple(extract_answer(draft.text, spec) for draft in drafts),
        answer=best.answer,
        votes={book.representative(g): count for g, count in tally.items()},
        stopped_early=outcome.stopped_by != "max_iterations",
        details={"mode": options.mode, "select": options.select,
                 **outcome.report(options.return_candidates)},
        refine_iterations=(outcome.iterations,),
    )


SELF_REFINE = register(
    Strategy(
        name="self_refine",
        description="Draft, judge and rewrite (a JSON critic or If-or-Else), stopping when the "
        "draft is kept or stops gaining self-certainty; returns the best iterate.",
        options=SelfRefineOptions,
        run=run_self_refine,
    )
)
