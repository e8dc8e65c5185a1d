"""The refinement loop that `self_refine` and `adaptive_refine` share: draft → judge → rewrite.

Two modes:
- `critique` (Self-Refine, Madaan et al. 2023): a separate critic sub-request sees only the
  question and the current draft — never earlier feedback, so it cannot grade its own history
  or be optimised against in its own context ("Spontaneous Reward Hacking") — and answers in
  JSON under vLLM's guided decoding (`{"verdict": "keep" | "revise", "feedback": …}`), so even a
  small model's verdict parses. On "revise" the writer sees the question, the draft and the
  feedback, and writes the next draft.
- `ioe` (If-or-Else, Li et al. 2024, "Confidence Matters"): one turn asks the writer to keep
  its answer if it is very confident and to revise it otherwise; no critic. Keeping the same
  extracted answer is the verdict "keep".

Intrinsic self-correction often makes answers worse (Huang et al. 2023), so the loop stops as
soon as the critic keeps the draft or the new draft is not more self-certain (Kang et al. 2025)
than the best so far by `min_gain`, and it returns the best iterate — by self-certainty, or by
majority over the iterates' answers — never blindly the last one.

With `samples_per_step` > 1 every step draws that many drafts in one batch and keeps the most
certain: the loop is then a beam, batched inside the engine.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from strategies.answers import AnswerGroups, AnswerSpec, answers_equivalent, extract_answer
from strategies.base import Message, Sample, Sampler, StrategyOptions
from strategies.voting import argmax_sample, majority_vote

__all__ = [
    "CRITIC_PROMPT",
    "IOE_PROMPT",
    "REFINE_PROMPT",
    "VERDICT_SCHEMA",
    "RefineLoopOptions",
    "RefineOutcome",
    "RefineStep",
    "run_refine_loop",
]

Mode = Literal["critique", "ioe"]
StopOn = Literal["verdict", "certainty", "both", "fixed"]
Verdict = Literal["keep", "revise"]
StoppedBy = Literal["verdict", "certainty", "max_iterations"]

# The critic's answer, decoded under this schema: a verdict a small model cannot misspell.
VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["keep", "revise"]},
        "feedback": {"type": "string", "maxLength": 800},
    },
    "required": ["verdict", "feedback"],
    "additionalProperties": False,
}

CRITIC_PROMPT = (
    "Act as a strict reviewer of the answer above. Check every step of its reasoning and "
    "every calculation against the question. If the answer is correct and complete, reply "
    'with the verdict "keep". If anything is wrong or missing, reply with the verdict '
    '"revise" and say briefly what is wrong. Reply in JSON: '
    '{"verdict": "keep" or "revise", "feedback": "..."}'
)
REFINE_PROMPT = (
    "A reviewer found a problem with your answer:\n{feedback}\n\n"
    "Answer the original question again, fixing the problem. Think it through, then give "
    "the final answer in the same format the question asked for."
)
# When the critic's reply could not be read (cut off by its token limit): refine blind.
REFINE_PROMPT_NO_FEEDBACK = (
    "Check your answer above for mistakes, then answer the original question again. Give the "
    "final answer in the same format the question asked for."
)
IOE_PROMPT = (
    "Review your answer above. If you are very confident that it is correct, keep it and "
    "repeat it unchanged. Otherwise, revise it: find the mistake, correct it, and give the "
    "final answer in the same format the question asked for."
)


class RefineLoopOptions(StrategyOptions):
    """The options of the refinement loop, shared by every strategy that runs it."""

    max_iterations: int = Field(
        default=3, ge=1, le=8,
        description="Most judge-and-rewrite iterations after the first draft.",
    )
    mode: Mode = Field(
        default="critique",
        description="critique: a separate critic (JSON verdict + feedback) then a rewrite "
        "(Self-Refine); ioe: one turn, keep the answer if very confident else revise it "
        "(If-or-Else).",
    )
    stop: StopOn = Field(
        default="both",
        description="verdict: stop when the draft is kept; certainty: stop when a new draft "
        "is not more self-certain than the best so far by min_gain; both: either; fixed: run "
        "max_iterations.",
    )
    min_gain: float = Field(
        default=0.0, ge=0.0, le=10.0,
        description="Self-certainty a new draft must add to the best so far to go on.",
    )
    select: Literal["certainty", "vote"] = Field(
        default="certainty",
        description="The iterate returned: the most self-certain one, or the majority answer "
        "over the iterates (its most certain draft).",
    )
    samples_per_step: int = Field(
        default=1, ge=1, le=8,
        description="Drafts per step, drawn in one batch; the most certain is kept (a beam).",
    )
    critic_temperature: float = Field(
        default=0.7, ge=0.0, le=2.0,
        description="Temperature of the critic's sub-request (critique mode).",
    )
    critic_max_tokens: int = Field(
        default=256, ge=16, le=4096,
        description="Token limit of the critic's JSON reply (critique mode).",
    )

    def loop_budget(self) -> int:
        """Sub-requests of the iterations after the first draft."""
        critic = 1 if self.mode == "critique" else 0
        return self.max_iterations * (self.samples_per_step + critic)

    def parallel_samples(self) -> int:
        return self.samples_per_step

    def refine_iterations(self) -> int:
        return self.max_iterations


@dataclass
class RefineStep:
    """One iterate: the draft kept at this step, and what judging it said."""

    step: int  # 0: the first draft
    draft: Sample
    answer: str | None
    verdict: Verdict | None = None  # None: not judged, or the critic's reply was unreadable
    feedback: str | None = None

    def report(self, with_text: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "step": self.step, "answer": self.answer, "certainty": self.draft.certainty,
            "tokens": self.draft.num_tokens, "verdict": self.verdict,
        }
        if with_text:
            entry["draft"] = self.draft.text
            entry["feedback"] = self.feedback
        return entry


@dataclass
class RefineOutcome:
    """What one run of the loop produced."""

    steps: list[RefineStep]
    chosen: int  # index into steps of the iterate returned
    stopped_by: StoppedBy
    drafts: list[Sample] = field(default_factory=list)  # every draft drawn, beams included

    @property
    def best(self) -> RefineStep:
        return self.steps[self.chosen]

    @property
    def iterations(self) -> int:
        """Rewrites done after the first draft."""
        return len(self.steps) - 1

    def report(self, with_text: bool) -> dict[str, Any]:
        return {"iterations": [step.report(with_text) for step in self.steps],
                "stopped_by": self.stopped_by, "chosen_step": self.chosen}


def _certainty(sample: Sample) -> float:
    return sample.certainty if sample.certainty is not None else float("-inf")


def _parse_verdict(text: str) -> tuple[Verdict | None, str | None]:
    try:
        reply = json.loads(text)
    except json.JSONDecodeError:
        return None, None
    if not isinstance(reply, dict) or reply.get("verdict") not in ("keep", "revise"):
        return None, None
    feedback = reply.get("feedback")
    return reply["verdict"], feedback.strip() if isinstance(feedback, str) else None


async def _draw_step(sampler: Sampler, count: int,
                     messages: tuple[Message, ...]) -> tuple[list[Sample], Sample]:
    """One step's drafts, drawn in one batch, and the most certain of them (the one kept)."""
    batch = list(await asyncio.gather(*sampler.submit(count, messages=messages)))
    return batch, batch[argmax_sample(batch, lambda s: s.certainty)]


def _select(steps: Sequence[RefineStep], select: str) -> int:
    drafts = [step.draft for step in steps]
    if select == "vote":
        book = AnswerGroups()
        groups = [book.add(step.answer) for step in steps]
        return majority_vote(drafts, groups).winner
    return argmax_sample(drafts, lambda s: s.certainty)


async def run_refine_loop(
    sampler: Sampler,
    options: RefineLoopOptions,
    spec: AnswerSpec,
    first: Sample | None = None,
    label: str = "",
) -> RefineOutcome:
    """Refine `first` (or a first draft drawn now) for at most `options.max_iterations`."""
    k = options.samples_per_step
    drafts: list[Sample] = []
    if first is None:
        batch, first = await _draw_step(sampler, k, ())
        drafts.extend(batch)
    steps = [RefineStep(0, first, extract_answer(first.text, spec))]
    best_certainty = _certainty(first)
    stopped_by: StoppedBy = "max_iterations"
    for iteration in range(1, options.max_iterations + 1):
        current = steps[-1]
        draft_turn = Message("assistant", current.draft.text)
        if options.mode == "critique":
            (critic,) = sampler.submit(
                1, messages=(draft_turn, Message("user", CRITIC_PROMPT)),
                json_schema=VERDICT_SCHEMA, temperature=options.critic_temperature,
                max_tokens=options.critic_max_tokens)
            current.verdict, current.feedback = _parse_verdict((await critic).text)
            if current.verdict == "keep" and options.stop in ("verdict", "both"):
                stopped_by = "verdict"
                sampler.report_progress(f"{label}step {iteration} verdict=keep: stop")
                break
            instruction = (REFINE_PROMPT.format(feedback=current.feedback) if current.feedback
                           else REFINE_PROMPT_NO_FEEDBACK)
        else:
            instruction = IOE_PROMPT
        batch, new = await _draw_step(sampler, k, (draft_turn, Message("user", instruction)))
        drafts.extend(batch)
        steps.append(RefineStep(iteration, new, extract_answer(new.text, spec)))
        if options.mode == "ioe":
            # IoE's verdict is the writer's own: the same final answer means it kept it.
            kept = (current.answer is not None and steps[-1].answer is not None
                    and answers_equivalent(current.answer, steps[-1].answer))
            current.verdict = "keep" if kept else "revise"
        gain = _certainty(new) - best_certainty
        sampler.report_progress(
            f"{label}step {iteration} verdict={current.verdict} "
            f"certainty={_certainty(new):.3f} gain={gain:+.3f}")
        if current.verdict == "keep" and options.stop in ("verdict", "both"):
            stopped_by = "verdict"
            break
        if options.stop in ("certainty", "both") and not gain > options.min_gain:
            stopped_by = "certainty"
            break
        best_certainty = max(best_certainty, _certainty(new))
    return RefineOutcome(steps, _select(steps, options.select), stopped_by, drafts)
