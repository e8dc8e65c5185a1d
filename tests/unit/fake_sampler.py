"""A scripted `Sampler` for strategy unit tests: the test double beside the seam.

A strategy only spends tokens through `Sampler.submit` (strategies/base.py), so a test scripts
what each prompt returns and checks what the strategy asked for. The fake takes the protocol's
full signature and behaves as the engine-backed sampler does where a strategy can tell:

- Scripts by prompt. `FakeSampler(script)` answers the request's own conversation
  (`messages=()`); `continuations={key: script}` answers conversations a submit continues
  with extra `Message`s. A key is the exact tuple of extra messages, a `str` (the content of
  the last extra message), or a predicate over the extra messages. Each script is consumed in
  order; a prompt with no script, or past the end of one, fails the submit with an
  AssertionError naming the prompt and how many samples were scripted for it.
- Sample indices are global over every submit (0, 1, 2, … across conversations), as seeds are.
- Every submit is recorded (`calls`, one `SubmitCall` each) with everything it passed.
- Samples stream token by token: with `watch`, the watcher is called after each token with the
  certainties so far, and True cuts the sample there (`stopped_by_watcher`, finish_reason
  "terminated").
- `abort_outstanding()` cancels and awaits every unfinished sample (recorded in `aborted`).
- `report_progress()` notes are recorded in `progress`.

The fake applies no sampling parameter itself: `max_tokens`, `temperature` and `json_schema`
are recorded, and the script says what the engine returned under them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from strategies.base import (
    WATCHER_STOP,
    CertaintyMethod,
    Message,
    Sample,
    TokenWatcher,
    ToolCall,
    ToolChoice,
)

__all__ = [
    "FakeSampler",
    "ScriptKey",
    "Scripted",
    "SubmitCall",
    "answers",
    "draw",
    "run_async",
    "word_pieces",
]

Messages = tuple[Message, ...]
# How a script is keyed: the exact extra messages, the content of the last one, or a predicate.
ScriptKey = Messages | str | Callable[[Messages], bool]

_WORD = re.compile(r"\s*\S+\s*")


def word_pieces(text: str) -> tuple[str, ...]:
    """The tokens of `text` when a step gives no explicit `pieces`: each whitespace-separated
    word with the whitespace after it (and any before the first), so that joining the first k
    pieces gives the text as it stood after k tokens."""
    return tuple(_WORD.findall(text))


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class Scripted:
    """One sample as the engine would return it.

    A sample has `num_tokens` tokens: `len(token_certainty)` when per-token certainties are
    given, else `tokens`, else the number of `word_pieces(text)`. `token_ids` are
    0..num_tokens-1.
    """

    text: str
    # The sample's certainty. Give this or `token_certainty`, not both: with per-token values
    # the certainty is their mean (over the tokens seen, when a watcher cuts the sample).
    certainty: float | None = None
    tokens: int | None = None
    logprob: float | None = None  # cumulative over the whole sample
    delay: float = 0.0  # seconds before the first token
    hangs: bool = False  # never finishes unless aborted
    # Per-token certainties: what a watcher is shown, one value per token.
    token_certainty: tuple[float, ...] = ()
    token_delay: float = 0.0  # seconds before each token
    # The text of each token, joining to `text`; default `word_pieces(text)`. Needed (given or
    # derived) one per token when `token_certainty` is given, to cut the text where a watcher
    # stops.
    pieces: tuple[str, ...] | None = None
    finish_reason: str = "stop"
    stop_reason: str | int | None = None
    entropy: float | None = None
    # Default: the mean of the token certainties seen, which is what the engine reports for any
    # sample shorter than DeepConf's 2048-token group (server/engine/certainty/summary.py).
    lowest_group_certainty: float | None = None
    raises: BaseException | None = None  # raised instead of finishing, e.g. an engine error
    # With tools offered: what the engine's tool parser read (Sample.tool_choice, tool_calls,
    # content); a watcher-cut sample keeps only tool_choice.
    tool_choice: ToolChoice | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    content: str | None = None

    def __post_init__(self) -> None:
        if self.certainty is not None and self.token_certainty:
            raise ValueError("give certainty or token_certainty, not both: the certainty of a "
                             "sample with per-token values is their mean")
        if self.pieces is not None and "".join(self.pieces) != self.text:
            raise ValueError(f"pieces {self.pieces!r} do not join to the text {self.text!r}")
        if self.token_certainty:
            count = len(self.token_certainty)
            if self.tokens is not None and self.tokens != count:
                raise ValueError(f"tokens={self.tokens} but token_certainty has {count} values")
            if len(self.token_pieces) != count:
                raise ValueError(
                    f"text {self.text!r} has {len(self.token_pieces)} pieces but "
                    f"token_certainty has {count} values: give one piece per token "
                    "(words of the text, or `pieces`)")

    @property
    def token_pieces(self) -> tuple[str, ...]:
        return self.pieces if self.pieces is not None else word_pieces(self.text)

    @property
    def num_tokens(self) -> int:
        if self.token_certainty:
            return len(self.token_certainty)
        return self.tokens if self.tokens is not None else len(self.token_pieces)

    def sample(self, index: int) -> Sample:
        """The whole sample, as it ends when nothing stops it."""
        certainty = _mean(self.token_certainty) if self.token_certainty else self.certainty
        return Sample(
            index=index,
            text=self.text,
            token_ids=tuple(range(self.num_tokens)),
            finish_reason=self.finish_reason,
            cumulative_logprob=self.logprob,
            certainty=certainty,
            stop_reason=self.stop_reason,
            entropy=self.entropy,
            lowest_group_certainty=self._lowest_group(self.token_certainty),
            token_certainty=self.token_certainty,
            tool_choice=self.tool_choice,
            tool_calls=self.tool_calls,
            content=self.content,
        )

    def cut(self, index: int, seen: int) -> Sample:
        """The sample as a watcher stopped it after `seen` tokens: everything cut to them."""
        values = self.token_certainty[:seen]
        logprob = None if self.logprob is None else self.logprob * seen / self.num_tokens
        return Sample(
            index=index,
            text="".join(self.token_pieces[:seen]),
            token_ids=tuple(range(seen)),
            finish_reason=WATCHER_STOP,
            cumulative_logprob=logprob,  # the same mean per token
            certainty=_mean(values),
            entropy=self.entropy,
            lowest_group_certainty=self._lowest_group(values),
            token_certainty=values,
            stopped_by_watcher=True,
            tool_choice=self.tool_choice,
        )

    def _lowest_group(self, values: Sequence[float]) -> float | None:
        if self.lowest_group_certainty is not None:
            return self.lowest_group_certainty
        return _mean(values)


@dataclass(frozen=True)
class SubmitCall:
    """One `submit` as the strategy made it: which samples it started and with what."""

    indices: tuple[int, ...]
    messages: Messages
    max_tokens: int | None
    temperature: float | None
    json_schema: Mapping[str, Any] | None
    priority: int
    watch: TokenWatcher | None

    @property
    def count(self) -> int:
        return len(self.indices)

    @property
    def watched(self) -> bool:
        return self.watch is not None


def _describe(messages: Messages) -> str:
    """A prompt as an assertion message names it."""
    if not messages:
        return "the request's own conversation"
    turns = ", ".join(f"{m.role}: {_short(m.content)}" for m in messages)
    return f"the conversation continued with [{turns}]"


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


@dataclass
class FakeSampler:
    """Answers each prompt from its script; records calls, finished and aborted samples."""

    script: Sequence[Scripted] = ()  # the request's own conversation (messages=())
    continuations: Mapping[ScriptKey, Sequence[Scripted]] = field(default_factory=dict)
    certainty_method: CertaintyMethod = "topk"
    family: str = "fake:family"
    calls: list[SubmitCall] = field(default_factory=list, init=False)
    finished: list[int] = field(default_factory=list, init=False)  # incl. stopped by a watcher
    stopped: list[int] = field(default_factory=list, init=False)  # stopped by their watcher
    aborted: list[int] = field(default_factory=list, init=False)
    progress: list[str] = field(default_factory=list, init=False)  # report_progress notes
    # Per script: how many of its samples were used.
    _drawn: dict[ScriptKey, int] = field(default_factory=dict, init=False, repr=False)
    _tasks: dict[int, asyncio.Task[Sample]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if () in self.continuations:
            raise ValueError("the request's own conversation is the positional `script`")

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
        """`Sampler.submit`: the next `count` steps of this prompt's script, started now."""
        prompt = tuple(messages)
        key, script = self._script_for(prompt)
        used = self._drawn.get(key, 0)
        if used + count > len(script):
            raise AssertionError(
                f"submit asked for {count} more sample(s) of {_describe(prompt)} after {used}, "
                f"but {len(script)} were scripted for it")
        steps = script[used : used + count]
        if watch is not None:
            for step in steps:
                if not step.token_certainty:
                    raise AssertionError(
                        f"submit passed a watcher for {_describe(prompt)}, but its scripted "
                        f"sample {step.text!r} has no token_certainty to show it")
        self._drawn[key] = used + count
        start = len(self._tasks)
        indices = tuple(range(start, start + count))
        self.calls.append(SubmitCall(indices, prompt, max_tokens, temperature, json_schema,
                                     priority, watch))
        tasks = []
        for index, step in zip(indices, steps, strict=True):
            task = asyncio.create_task(self._draw(index, step, watch))
            self._tasks[index] = task
            tasks.append(task)
        return tasks

    def _script_for(self, prompt: Messages) -> tuple[ScriptKey, Sequence[Scripted]]:
        """The exact continuation wins, then the last message's content, then one predicate."""
        if not prompt:
            return (), self.script
        if prompt in self.continuations:
            return prompt, self.continuations[prompt]
        if prompt[-1].content in self.continuations:
            return prompt[-1].content, self.continuations[prompt[-1].content]
        matching = [key for key in self.continuations if callable(key) and key(prompt)]
        if len(matching) > 1:
            raise AssertionError(f"{len(matching)} predicates match {_describe(prompt)}")
        if not matching:
            raise AssertionError(f"no script for {_describe(prompt)}: 0 samples were scripted "
                                 f"for it ({len(self.continuations)} continuation scripts)")
        return matching[0], self.continuations[matching[0]]

    async def _draw(self, index: int, step: Scripted, watch: TokenWatcher | None) -> Sample:
        try:
            if step.hangs:
                await asyncio.Event().wait()
            await asyncio.sleep(step.delay)
            for seen in range(1, step.num_tokens + 1):
                if step.token_delay:
                    await asyncio.sleep(step.token_delay)
                if watch is not None and watch(step.token_certainty[:seen]):
                    self.stopped.append(index)
                    self.finished.append(index)
                    return step.cut(index, seen)
        except asyncio.CancelledError:
            self.aborted.append(index)
            raise
        if step.raises is not None:
            raise step.raises
        self.finished.append(index)
        return step.sample(index)

    async def abort_outstanding(self) -> None:
        """Cancel every unfinished sample and wait until each has ended."""
        outstanding = [task for task in self._tasks.values() if not task.done()]
        for task in outstanding:
            task.cancel()
        await asyncio.gather(*outstanding, return_exceptions=True)

    def report_progress(self, text: str) -> None:
        """`Sampler.report_progress`: recorded, in order."""
        self.progress.append(text)

    @property
    def outstanding(self) -> list[int]:
        return [index for index, task in self._tasks.items() if not task.done()]

    @property
    def submitted(self) -> list[tuple[int, int]]:
        """(index, priority) of every sample started, in index order."""
        return [(index, call.priority) for call in self.calls for index in call.indices]

    def call_of(self, index: int) -> SubmitCall:
        """The submit that started sample `index`."""
        return next(call for call in self.calls if index in call.indices)


def answers(*values: str, **kwargs: Any) -> list[Scripted]:
    """Completions ending in 'The answer is X.' for each X."""
    return [Scripted(f"Let me think. The answer is {v}.", **kwargs) for v in values]


T = TypeVar("T")


def run_async(body: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a test body on an event loop: submit starts tasks, so it needs one."""
    return asyncio.run(body())


async def draw(sampler: FakeSampler, count: int = 1, **submit: Any) -> list[Sample]:
    """Submit and await every sample, in index order."""
    return list(await asyncio.gather(*sampler.submit(count, **submit)))
