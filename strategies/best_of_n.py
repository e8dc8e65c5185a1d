"""Best-of-N: draw N samples in one batch and pick one, with no reward model.

Selections: `self_certainty` (argmax; Kang et al. 2025), `borda` (certainty-ranked Borda vote
over extracted answers, same paper), `logprob` (mean token log-probability) and `majority`
(most frequent answer). Open-ended text, where no sample has an extractable answer, falls back
to argmax self-certainty whatever the selection.

With tools offered, answers are tool-call keys (strategies.tool_votes, option `tool_vote`;
`hierarchical` applies to the borda and majority selections), and every selection picks among
the valid samples first: a call whose arguments are not a JSON object, or no call where the
request requires one, is chosen only when no sample is valid.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import Field

from strategies.answers import AnswerGroups, parse_answer_format
from strategies.base import Result, Sample, Sampler, Strategy, register
from strategies.tool_votes import ToolVoteOptions, sample_answer, sample_is_valid
from strategies.voting import (
    Vote,
    argmax_sample,
    borda_vote,
    borda_weights,
    hierarchical_vote,
    majority_vote,
    tally_groups,
)

__all__ = ["BestOfNOptions", "run_best_of_n"]

Selection = Literal["self_certainty", "borda", "logprob", "majority"]


class BestOfNOptions(ToolVoteOptions):
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
    selection: Selection, samples: list[Sample], groups: list[int | None],
    tools: list[int | None] | None, borda_p: float,
) -> Vote:
    """The selection's choice; `tools` is the hierarchical vote's first stage, or None."""
    if selection in ("borda", "majority") and tools is not None:
        weights = borda_weights(samples, borda_p) if selection == "borda" else None
        return hierarchical_vote(samples, tools, groups, weights)
    if selection == "borda":
        return borda_vote(samples, groups, borda_p)
    if selection == "majority":
        return majority_vote(samples, groups)
    key = (lambda s: s.certainty) if selection == "self_certainty" else (lambda s: s.mean_logprob)
    # Valid samples first (tool calls): the argmax runs over them when there are any.
    valid = [i for i, sample in enumerate(samples) if sample_is_valid(sample)]
    among = valid or list(range(len(samples)))
    winner = among[argmax_sample([samples[i] for i in among], key)]
    return Vote(winner, groups[winner], {})


async def run_best_of_n(sampler: Sampler, options: BestOfNOptions) -> Result:
    spec = parse_answer_format(options.answer_format)
    try:
        samples = list(await asyncio.gather(*sampler.submit(options.n)))
    finally:
        await sampler.abort_outstanding()

    read = [sample_answer(sample, spec, options.tool_vote, options.ignore_args)
            for sample in samples]
    answers = [answer.answer for answer in read]
    book, tool_book = AnswerGroups(), AnswerGroups()
    groups = [book.add(answer) for answer in answers]
    tools = [tool_book.add(answer.tool) for answer in read]
    hierarchical = options.tool_vote == "hierarchical" and any(g is not None for g in tools)
    has_answers = any(g is not None for g in groups)
    selection: Selection = options.selection or ("borda" if has_answers else "self_certainty")
    if not has_answers and selection in ("borda", "majority"):
        selection = "self_certainty"  # nothing to vote on: open-ended text
    vote = _select(selection, samples, groups, tools if hierarchical else None, options.borda_p)
    if not vote.tally and has_answers:
        # argmax selections still report how the answers were spread
        vote = Vote(vote.winner, vote.group, majority_vote(samples, groups).tally)
    details: dict[str, object] = {"selection": selection}
    if any(sample.tool_choice is not None for sample in samples):
        details["tool_vote"] = options.tool_vote
    if hierarchical:
        details["tool_votes"] = {tool_book.representative(g): weight
                                 for g, weight in tally_groups(tools).items()}
    return Result(
        chosen=samples[vote.winner],
        samples=tuple(samples),
        answers=tuple(answers),
        answer=book.representative(vote.group) if vote.group is not None else None,
        votes={book.representative(g): weight for g, weight in vote.tally.items()},
        details=details,
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
