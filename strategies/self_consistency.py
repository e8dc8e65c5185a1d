"""Self-consistency with a pluggable stop rule: fixed N, ESC, or ASC — one sampling loop.

Samples are submitted in windows (all N at once for `fixed`) so that the engine batches them,
and judged in index order so that a run is reproducible: with a seeded request, sample i is the
same whatever the timing, and the stop point is what replaying the rule on the same samples
gives. `lookahead` windows beyond the one being judged are already in flight, at a lower
priority, so stopping early does not cost latency; whatever is outstanding when the rule is
satisfied is aborted.

With tools offered, samples vote over their tool calls (strategies.tool_votes, option
`tool_vote`); the stop rules judge the same keys (with `hierarchical`, the tool-and-arguments
key, so a window is unanimous only when the whole calls agree).

Votes read answers, not certainty, so by default (`representative: first`) the samples carry
none: the engine samples them exactly as plain requests, with no vocabulary-wide log-softmax
per token, and the earliest sample of the winning answer is returned (ties → the earlier
answer, as Wang et al. 2023 leave open). `most_certain` asks for self-certainty to pick the
best-supported writing of the answer instead, at that per-token cost.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable
from typing import Literal

from pydantic import Field

from strategies.answers import AnswerGroups, parse_answer_format
from strategies.base import CertaintySource, Result, Sample, Sampler, Strategy, register
from strategies.stop_rules import (
    AdaptiveConsistency,
    EarlyStoppingConsistency,
    FixedSamples,
    StopRule,
)
from strategies.tool_votes import ToolVoteOptions, sample_answer
from strategies.voting import hierarchical_vote, majority_vote, tally_groups

__all__ = ["SelfConsistencyOptions", "run_self_consistency"]

# Priority of sub-requests beyond the window being judged (lower number = sooner).
SPECULATIVE_PRIORITY = 1


class SelfConsistencyOptions(ToolVoteOptions):
    max_samples: int = Field(default=16, ge=1, le=64, description="Most samples to draw.")
    stop: Literal["fixed", "esc", "asc"] = Field(
        default="esc",
        description="fixed: draw max_samples; esc: stop at the first unanimous window; "
        "asc: stop when the leading answer is ahead with probability >= confidence.",
    )
    window: int = Field(
        default=5, ge=1, le=64, description="Samples per window (ESC's unit; ASC's batch)."
    )
    confidence: float = Field(
        default=0.95, gt=0.5, lt=1.0, description="ASC's stopping threshold on P(leader best)."
    )
    lookahead: int = Field(
        default=1, ge=0, le=8,
        description="Windows sampled ahead of the one being judged (speculative, lower priority).",
    )
    representative: Literal["first", "most_certain"] = Field(
        default="first",
        description="Which sample of the winning answer is returned, and which answer wins a "
        "tie: first (the earliest sample; the samples carry no certainty or logprobs, so the "
        "engine does no per-token work beyond plain sampling) or most_certain (by "
        "self-certainty, which the engine then computes for every token).",
    )

    def sample_budget(self) -> int:
        return self.max_samples

    def certainty_source(self) -> CertaintySource | None:
        # A vote reads answers only; certainty would only pick among equal answers, and asking
        # for it costs the engine a vocabulary-wide log-softmax per token (docs/benchmarks.md).
        return None if self.representative == "most_certain" else "none"

    def stop_rule(self) -> StopRule:
        if self.stop == "esc":
            return EarlyStoppingConsistency(window=self.window)
        if self.stop == "asc":
            return AdaptiveConsistency(confidence=self.confidence)
        return FixedSamples()

    def batch_size(self) -> int:
        return self.max_samples if self.stop == "fixed" else min(self.window, self.max_samples)


async def run_self_consistency(sampler: Sampler, options: SelfConsistencyOptions) -> Result:
    spec = parse_answer_format(options.answer_format)
    rule = options.stop_rule()
    batch = options.batch_size()
    in_flight = batch * (1 + options.lookahead)  # samples: the judged window + lookahead

    pending: deque[Awaitable[Sample]] = deque()
    submitted = 0
    samples: list[Sample] = []
    answers: list[str | None] = []
    groups: list[int | None] = []
    tools: list[int | None] = []  # hierarchical tool votes: the tool chosen, stage one
    book, tool_book = AnswerGroups(), AnswerGroups()
    try:
        while len(samples) < options.max_samples:
            if len(samples) % batch == 0:  # a window was judged: keep the pipeline full
                while submitted < options.max_samples and submitted - len(samples) < in_flight:
                    count = min(batch, options.max_samples - submitted)
                    priority = 0 if submitted == len(samples) else SPECULATIVE_PRIORITY
                    pending.extend(sampler.submit(count, priority=priority))
                    submitted += count
            sample = await pending.popleft()
            answer = sample_answer(sample, spec, options.tool_vote, options.ignore_args)
            samples.append(sample)
            answers.append(answer.answer)
            groups.append(book.add(answer.answer))
            tools.append(tool_book.add(answer.tool))
            if rule.settled(groups):
                break
    finally:
        await sampler.abort_outstanding()

    details: dict[str, object] = {"stop": options.stop}
    if any(sample.tool_choice is not None for sample in samples):
        details["tool_vote"] = options.tool_vote
    if options.tool_vote == "hierarchical" and any(g is not None for g in tools):
        vote = hierarchical_vote(samples, tools, groups)
        details["tool_votes"] = {tool_book.representative(g): count
                                 for g, count in tally_groups(tools).items()}
    else:
        vote = majority_vote(samples, groups)
    return Result(
        chosen=samples[vote.winner],
        samples=tuple(samples),
        answers=tuple(answers),
        answer=book.representative(vote.group) if vote.group is not None else None,
        votes={book.representative(g): count for g, count in tally_groups(groups).items()},
        stopped_early=len(samples) < options.max_samples,
        details=details,
    )


SELF_CONSISTENCY = register(
    Strategy(
        name="self_consistency",
        description="Sample several reasoning paths and return the majority answer, stopping "
        "early (ESC windows or ASC's Beta criterion) once the vote is settled.",
        options=SelfConsistencyOptions,
        run=run_self_consistency,
    )
)
