"""Votes over tool calls: what a sample *did* when the request offered tools, as a key that
votes with identical keys only.

The engine layer reads each sample with the served model's own tool parser (vLLM's, the one
`--tool-call-parser` names) and hands strategies pure `ToolCall(name, arguments)` tuples; here
they become keys (`ExactAnswer`s, see strategies.answers):

- `name`: which tool(s): `get_weather(…)`.
- `name_args`: tool and arguments as canonical JSON (sorted keys, 1 == 1.0, no whitespace):
  `get_weather({"city":"Paris"})`; argument names in `ignore_args` (top-level keys, e.g.
  free-text fields) are left out of the comparison.
- `hierarchical`: the tool first, by majority among all samples; then the arguments, among the
  samples that chose it (its key is the `name_args` key).

Parallel calls of one sample form one key, in sorted order (the same calls in another order are
the same action). A sample that answers in text is a different answer from any call: it votes
with its extracted answer (`answer_format`), or as `(text)` when none is extractable (with
`name`, every text answer is `(text)`: the decision not to call a tool). A sample whose call
has arguments that are not a JSON object, or that makes no call where the request requires
one (tool_choice "required" or a named function), is invalid: it votes for nothing, and
best-of-N picks among valid samples first. With tool_choice "auto" a text answer is valid.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from strategies.answers import AnswerSpec, ExactAnswer, canonical_json, extract_answer
from strategies.base import Sample, StrategyOptions, ToolCall

__all__ = [
    "TEXT_ANSWER",
    "ToolAnswer",
    "ToolVote",
    "ToolVoteOptions",
    "call_arguments",
    "sample_answer",
    "sample_is_valid",
]

ToolVote = Literal["name", "name_args", "hierarchical"]

# The key of a text answer (under tools offered) with nothing extractable, and of every text
# answer when voting by tool name.
TEXT_ANSWER = ExactAnswer("(text)")


class ToolVoteOptions(StrategyOptions):
    """Options of the strategies that vote or select over tool calls."""

    tool_vote: ToolVote = Field(
        default="name_args",
        description="With tools offered, what the vote compares: name (which tool), name_args "
        "(tool and arguments as canonical JSON), hierarchical (the tool by majority, then its "
        "arguments among the samples that chose it).",
    )
    ignore_args: tuple[Annotated[str, StringConstraints(min_length=1, max_length=200)], ...] = (
        Field(default=(), max_length=32,
              description="Argument names (top-level) left out when comparing tool calls, "
              "e.g. free-text fields.")
    )


def call_arguments(call: ToolCall) -> dict[str, Any] | None:
    """The call's arguments as a JSON object (numbers as exact decimals), or None when they
    are not one (the call is invalid)."""
    try:
        value = json.loads(call.arguments, parse_float=Decimal)
        canonical_json(value)  # raises RecursionError where the vote could not key it
    except (ValueError, RecursionError, InvalidOperation):
        return None
    return value if isinstance(value, dict) else None


def sample_is_valid(sample: Sample) -> bool:
    """False for a sample whose call's arguments are not a JSON object, or which makes no call
    where the request requires one; samples drawn without tools are always valid."""
    if sample.tool_choice is None:
        return True
    if any(call_arguments(call) is None for call in sample.tool_calls):
        return False
    return bool(sample.tool_calls) or sample.tool_choice == "auto"


def _call_key(call: ToolCall, with_arguments: bool, ignore: frozenset[str]) -> str:
    if not with_arguments:
        return f"{call.name}(…)"
    arguments = call_arguments(call) or {}
    kept = {key: value for key, value in arguments.items() if key not in ignore}
    return f"{call.name}({canonical_json(kept)})"


def _calls_key(calls: Sequence[ToolCall], with_arguments: bool, ignore: frozenset[str]) -> str:
    return "; ".join(sorted(_call_key(call, with_arguments, ignore) for call in calls))


@dataclass(frozen=True)
class ToolAnswer:
    """What a sample votes for: `answer` (the tool_vote key, or the extracted answer of a
    sample drawn without tools) and `tool`, the first stage of a hierarchical vote (None
    without tools, or for an invalid sample)."""

    answer: str | None
    tool: str | None


def sample_answer(
    sample: Sample, spec: AnswerSpec, tool_vote: ToolVote = "name_args",
    ignore_args: Sequence[str] = (),
) -> ToolAnswer:
    """The sample's answer for voting: its extracted answer when drawn without tools, else
    the key of its calls (or of its text answer) under `tool_vote`."""
    if sample.tool_choice is None:
        return ToolAnswer(extract_answer(sample.text, spec), None)
    if not sample_is_valid(sample):
        return ToolAnswer(None, None)
    if not sample.tool_calls:
        if tool_vote == "name":
            return ToolAnswer(TEXT_ANSWER, TEXT_ANSWER)
        text = sample.content if sample.content is not None else sample.text
        return ToolAnswer(extract_answer(text, spec) or TEXT_ANSWER, TEXT_ANSWER)
    ignore = frozenset(ignore_args)
    tool = ExactAnswer(_calls_key(sample.tool_calls, False, ignore))
    if tool_vote == "name":
        return ToolAnswer(tool, tool)
    return ToolAnswer(ExactAnswer(_calls_key(sample.tool_calls, True, ignore)), tool)
