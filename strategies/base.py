"""What every strategy sees and returns, and the registry the API looks strategies up in.

A strategy is an async function of (Sampler, options) → Result. It never sees HTTP or the engine:
the Sampler is the only way it spends tokens, so the same strategy runs on the in-process vLLM
engine, on a remote OpenAI-compatible backend, and on the scripted fake sampler of unit tests
(`tests/unit/fake_sampler.py`). docs/architecture.md describes the contract and walks through
adding a strategy.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from strategies.answers import parse_answer_format

__all__ = [
    "REGISTRY",
    "WATCHER_STOP",
    "CertaintyMethod",
    "CertaintySource",
    "Message",
    "Result",
    "Sample",
    "Sampler",
    "Strategy",
    "StrategyOptions",
    "TokenWatcher",
    "ToolCall",
    "ToolChoice",
    "register",
]

CertaintyMethod = Literal["exact", "topk"]
# What a strategy asks its samples to carry beyond the exact-when-available default (None):
# "topk" the top-20 logprob estimate even where the exact plugin runs; "none" no certainty and
# no logprobs at all, so the engine skips its per-token vocabulary-wide work.
CertaintySource = Literal["topk", "none"]

# The finish_reason of a sample its watcher stopped (DeepConf's "terminated" trace).
WATCHER_STOP = "terminated"

# Called with the per-token certainties of a sample generated so far (the same values
# `Sample.token_certainty` ends up with); returning True stops the sample there.
TokenWatcher = Callable[[Sequence[float]], bool]


@dataclass(frozen=True)
class Message:
    """One turn a strategy appends after the request's own conversation (e.g. a draft to
    criticise and the instruction to criticise it)."""

    role: Literal["system", "user", "assistant"]
    content: str


# How a request offered tools: "auto" (the model may call one or answer in text), "required"
# (it must call one), "named" (it must call the function the request names).
ToolChoice = Literal["auto", "required", "named"]


@dataclass(frozen=True)
class ToolCall:
    """One function call of a sample, as the served model's tool parser read it (the engine
    layer parses; a strategy only compares, see strategies.tool_votes)."""

    name: str
    arguments: str  # JSON text as the model wrote it
    # The parser's own id for the call, when it makes one (e.g. kimi_k2's); never compared.
    id: str | None = field(default=None, compare=False)


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
    # True when the submit's watcher asked to stop this sample: the text is cut off there and
    # finish_reason is WATCHER_STOP ("terminated").
    stopped_by_watcher: bool = False
    # With tools offered (tool_choice other than "none"): how they were offered, the calls the
    # tool parser found in the text (none: the sample answered in text), and `content`, the
    # text outside the calls as the parser left it (None when there is none). Without tools:
    # None, (), None.
    tool_choice: ToolChoice | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    content: str | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def mean_logprob(self) -> float | None:
        if self.cumulative_logprob is None or not self.token_ids:
            return None
        return self.cumulative_logprob / len(self.token_ids)


class Sampler(Protocol):
    """Draws samples for one request: its conversation, optionally continued, with its own
    sampling parameters unless a call overrides them.

    Every sample is its own engine sub-request, so it can be aborted alone. Sample i of a
    request (counted over every `submit` of that request) gets seed `seed + i` when the request
    is seeded, so a run is reproducible. Samples of one conversation share its prompt prefill;
    the request's usage counts each distinct prompt once.
    """

    # How Sample.certainty was computed; None when the strategy asked for none ("none").
    certainty_method: CertaintyMethod | None
    # The served model and the request's system prompt, hashed: requests of one family can
    # share statistics across requests (DSC's recent stopping sizes).
    family: str

    def submit(
        self,
        count: int,
        *,
        messages: Sequence[Message] = (),
        max_tokens: int | None = None,
        temperature: float | None = None,
        json_schema: Mapping[str, Any] | None = None,
        priority: int = 0,
        watch: TokenWatcher | None = None,
    ) -> list[Awaitable[Sample]]:
        """Start `count` sub-requests now; the awaitables resolve in any order.

        - `messages`: turns appended after the request's own conversation (none: sample the
          request as it came).
        - `max_tokens`, `temperature`: this call's values instead of the request's (max_tokens
          is still capped by the context left after the prompt).
        - `json_schema`: decode under this JSON schema (structured output).
        - `priority`: lower is scheduled sooner (with `--scheduling-policy priority`).
        - `watch`: called as tokens arrive with the sample's certainties so far; True stops it.
        """
        ...

    async def abort_outstanding(self) -> None:
        """Abort every sub-request of this request that has not finished."""
        ...

    def report_progress(self, text: str) -> None:
        """A one-line progress note for a client that watches (a streamed request gets it as
        an SSE comment while the strategy works); it changes nothing about sampling."""
        ...


class StrategyOptions(BaseModel):
    """Options every strategy shares. Subclasses add theirs; unknown options are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    answer_format: str = Field(
        default="auto",
        max_length=600,
        description="How to extract the final answer: auto, boxed, answer_is, number, choice, "
        "code, text, json (the completion parsed as JSON, compared in canonical form), "
        "json:<pointer> (one field of it, e.g. json:/answer), or regex:<pattern> (first "
        "capturing group of the last match).",
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

    def budget_option(self) -> str:
        """The option that sets `sample_budget()`, named in an over-cap error."""
        return "max_samples"

    def parallel_samples(self) -> int:
        """The most samples of one prompt drawn together: above 1 they must differ, so the
        request needs temperature > 0."""
        return self.sample_budget()

    def refine_iterations(self) -> int:
        """The most refinement iterations a request may run (0: not a refinement strategy);
        the server caps it."""
        return 0

    def certainty_source(self) -> CertaintySource | None:
        """Which token certainty the samples must carry: None (default) the exact value when
        the engine has it, else the top-20 estimate; "topk" the estimate even where the exact
        plugin runs; "none" nothing — `Sample.certainty`, `token_certainty` and
        `cumulative_logprob` stay empty and the engine computes no logprobs, which is what
        makes a strategy that only votes cost no more than plain calls."""
        return None


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
    # Refinement strategies: the iterations each refinement loop ran, and the difficulty route
    # taken (recorded in metrics by the API).
    refine_iterations: tuple[int, ...] = ()
    route: Literal["easy", "hard"] | None = None
    # DSC: the samples pre-allocated from the request's group history (recorded in metrics).
    preallocation: int | None = None


OptionsT = TypeVar("OptionsT", bound=StrategyOptions)


@dataclass(frozen=True)
class Strategy(Generic[OptionsT]):
    """A registered strategy: its name in requests, its options model, and its run function."""

    name: str
    description: str
    options: type[OptionsT]
    run: Callable[[Sampler, OptionsT], Awaitable[Result]]

    def parse_options(self, raw: Mapping[str, Any]) -> OptionsT:
        """Validate request options; raises pydantic.ValidationError naming the bad option."""
        return self.options.model_validate(raw)


REGISTRY: dict[str, Strategy[Any]] = {}


def register(strategy: Strategy[OptionsT]) -> Strategy[OptionsT]:
    """Add a strategy to `REGISTRY` (at import of its module); a name is taken once."""
    if strategy.name in REGISTRY:
        raise ValueError(f"strategy {strategy.name!r} is registered twice")
    REGISTRY[strategy.name] = strategy
    return strategy
