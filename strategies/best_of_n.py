"""Best-of-N: draw N samples in one batch and pick one, with no reward model.

Selections: `self_certainty` (argmax; Kang et al. 2025), `borda` (certainty-ranked Borda vote
over extracted answers, same paper), `logprob` (mean token log-probability) and `majority`
(most frequent answer). Open-ended text, where no sample has an extractable answer, falls back
to argmax self-certainty whatever the selection.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import Field

from strategies.answers import AnswerGroups, extract_answer, parse_answer_format
from strategies.base import Result, Sampler, Strategy, StrategyOptions, register
from strategies.voting import Vote, argmax_sample, borda_vote, majority_vote

__all__ = ["BestOfNOptions", "run_best_of_n"]

Selection = Literal["self_certainty", "borda", "logprob", "majority"]


class BestOfNOptions(StrategyOptions):
    n: int = Field(default=8, ge=1, le=64, description="Samples to draw.")
    selection: Selection | None = Field(
        default=None,
        description="self_certainty | borda | logprob | majority; default: borda when the "
        "samples have extractable answers, else self_certainty.",
    )
    borda_p: float = Field(
        default=0.5, ge=0.0, le=4.0, description="Borda weight exponent: rank r gives (N-r+1)^p."
    )

    def sample_budget(self) -> int:
        return self.n

    def budget_option(self) -> str:
        return "n"


def _select(
    selection: Selection, samples: list, groups: list[int | None], borda_p: float
) -> Vote:
    if selection == "borda":
        return borda_vote(samples, groups, borda_p)
    if selection == "majority":
        return majority_vote(samples, groups)
    key = (lambda s: s.certainty) if selection == "self_certainty" else (lambda s: s.mean_logprob)
    winner = argmax_sample(samples, key)
    return Vote(winner, groups[winner], {})


async def run_best_of_n(sampler: Sampler, options: BestOfNOptions) -> Result:
    spec = parse_answer_format(options.answer_format)
    try:
        samples = list(await asyncio.gather(*sampler.submit(options.n)))
    finally:
        await sampler.abort_outstanding()

    answers = [extract_answer(sample.text, spec) for sample in samples]
    book = AnswerGroups()
    groups = [book.add(answer) for answer in answers]
    has_answers = any(g is not None for g in groups)
    selection: Selection = options.selection or ("borda" if has_answers else "self_certainty")
    if not has_answers and selection in ("borda", "majority"):
        selection = "self_certainty"  # nothing to vote on: open-ended text
    vote = _select(selection, samples, groups, options.borda_p)
    if not vote.tally and has_answers:
        # argmax selections still report how the answers were spread
        vote = Vote(vote.winner, vote.group, majority_vote(samples, groups).tally)
    return Result(
        chosen=samples[vote.winner],
        samples=tuple(samples),
        answers=tuple(answers),
        answer=book.representative(vote.group) if vote.group is not None else None,
        votes={book.representative(g): weight for g, weight in vote.tally.items()},
        details={"selection": selection},
    )


BEST_OF_N = register(
    Strategy(
        name="best_of_n",
        description="Draw n samples in one batch and return the best by self-certainty, "
        "certainty-ranked Borda vote, mean logprob, or majority.",
        options=BestOfNOptions,
        run=run_best_of_n,
    )
)
