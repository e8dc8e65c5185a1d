"""What every strategy sees and returns, and the registry the API looks strategies up in.

A strategy is an async function of (Sampler, options) → Result. It never sees HTTP or the engine:
the Sampler is the only way it spends tokens, so the same strategy runs on the in-process vLLM
engine, on a remote OpenAI-compatible backend, and on the scripted fake engine of unit tests.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from strategies.answers import parse_answer_format

__all__ = [
    "REGISTRY",
    "Result",
    "Sample",
    "Sampler",
    "Strategy",
    "StrategyOptions",
    "register",
]


@dataclass(frozen=True)
class Sample:
    """One finished sub-request."""

    index: int
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None
    cumulative_logprob: float | None = None
    # Mean self-certainty over the generated tokens (higher = more confident), or None when the
    # backend gave nothing to compute it from. Exact or the top-k estimate: see
    # Sampler.certainty_method.
    certainty: float | None = None
    stop_reason: str | int | None = None
    # Mean next-token entropy in nats (exact certainty only).
    entropy: float | None = None
    # Lowest mean certainty over a sliding window of tokens (DeepConf "group confidence").
    lowest_group_certainty: float | None = None
    # The per-token values `certainty` is the mean of.
    token_certainty: tuple[float, ...] = ()

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def mean_logprob(self) -> float | None:
        if self.cumulative_logprob is None or not self.token_ids:
            return None
        return self.cumulative_logprob / len(self.token_ids)


class Sampler(Protocol):
    """Draws samples of one request's prompt with the request's own sampling parameters.

    Every sample is its own engine sub-request, so it can be aborted alone. Sample i of a
    request gets seed `seed + i` when the request is seeded, so a run is reproducible.
    """

    certainty_method: str  # "exact" | "topk": how Sample.certainty was computed

    def submit(self, count: int, *, priority: int = 0) -> list[Awaitable[Sample]]:
        """Start `count` sub-requests now; the awaitables resolve in any order.

        Lower `priority` is scheduled sooner (with `--scheduling-policy priority`).
        """
        ...

    async def abort_outstanding(self) -> None:
        """Abort every sub-request of this request that has not finished."""
        ...


class StrategyOptions(BaseModel):
    """Options every strategy shares. Subclasses add theirs; unknown options are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    answer_format: str = Field(
        default="auto",
        max_length=600,
        description="How to extract the final answer: auto, boxed, answer_is, number, choice, "
        "code, text, or regex:<pattern> (first capturing group of the last match).",
    )
    return_candidates: bool = Field(
        default=False, description="Include every sample with its answer and certainty."
    )

    @field_validator("answer_format")
    @classmethod
    def _known_answer_format(cls, value: str) -> str:
        parse_answer_format(value)  # raises ValueError with a user-facing message
        return value

    @abstractmethod
    def sample_budget(self) -> int:
        """The most samples this strategy may draw with these options."""


@dataclass(frozen=True)
class Result:
    """What a strategy decided, and the evidence."""

    chosen: Sample
    samples: tuple[Sample, ...]  # every finished sample the decision used, in index order
    answers: tuple[str | None, ...]  # the extracted answer of each sample
    answer: str | None  # the winning answer (None for open-ended text)
    votes: dict[str, float]  # winning-answer candidates → count or Borda weight
    stopped_early: bool = False
    details: dict[str, Any] = field(default_factory=dict)  # e.g. stop rule, selection used


RunFunction = Callable[[Sampler, Any], Awaitable[Result]]


@dataclass(frozen=True)
class Strategy:
    name: str
    description: str
    options: type[StrategyOptions]
    run: RunFunction

    def parse_options(self, raw: dict[str, Any]) -> StrategyOptions:
        """Validate request options; raises pydantic.ValidationError naming the bad option."""
        return self.options.model_validate(raw)


REGISTRY: dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    if strategy.name in REGISTRY:
        raise ValueError(f"strategy {strategy.name!r} is registered twice")
    REGISTRY[strategy.name] = strategy
    return strategy

