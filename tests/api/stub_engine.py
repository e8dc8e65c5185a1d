"""A stand-in for `VllmEngine` with only what the routes use, for in-process HTTP tests.

The HTTP layer reaches the engine through four seams: `alive`, vLLM's serving objects for plain
requests (`chat.create_chat_completion`, `completion.create_completion`, `models`), and
`open_sampler` for strategy requests. The stub answers each from what a test configured and
records what it was asked, as httpx's `MockTransport` sits beside its transport seam. Strategy
requests sample from the scripted `FakeSampler` (tests/unit/fake_sampler.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatMessage,
)
from vllm.entrypoints.openai.completion.protocol import (
    CompletionRequest,
    CompletionResponse,
    CompletionResponseChoice,
)
from vllm.entrypoints.serve.engine.protocol import ErrorResponse, ModelCard, ModelList, UsageInfo

from server.engine.vllm import OpenedSampler
from server.engine.vllm_sampler import SamplerUsage
from tests.unit.fake_sampler import FakeSampler, Scripted

__all__ = ["SERVED_MODEL", "Opened", "StubEngine", "StubModels", "StubServing"]

SERVED_MODEL = "smollm2"

PlainReply = ChatCompletionResponse | CompletionResponse | ErrorResponse


def _default_reply(request: ChatCompletionRequest | CompletionRequest) -> PlainReply:
    usage = UsageInfo(prompt_tokens=3, completion_tokens=1, total_tokens=4)
    if isinstance(request, ChatCompletionRequest):
        return ChatCompletionResponse(
            model=SERVED_MODEL, usage=usage,
            choices=[ChatCompletionResponseChoice(
                index=0, message=ChatMessage(role="assistant", content="plain"),
                finish_reason="stop")],
        )
    return CompletionResponse(
        model=SERVED_MODEL, usage=usage,
        choices=[CompletionResponseChoice(index=0, text="plain", finish_reason="stop")],
    )


@dataclass
class StubServing:
    """vLLM's `OpenAIServingChat` / `OpenAIServingCompletion` for plain requests: answers
    `reply` (a default response when None), raises `raises`, or with `hangs` waits until
    cancelled (recorded in `cancelled`)."""

    reply: PlainReply | None = None
    raises: BaseException | None = None
    hangs: bool = False
    requests: list[ChatCompletionRequest | CompletionRequest] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: bool = False

    async def _answer(self, request: ChatCompletionRequest | CompletionRequest) -> PlainReply:
        self.requests.append(request)
        self.started.set()
        if self.hangs:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        if self.raises is not None:
            raise self.raises
        return self.reply if self.reply is not None else _default_reply(request)

    async def create_chat_completion(self, request: ChatCompletionRequest,
                                     raw_request: Any) -> PlainReply:
        return await self._answer(request)

    async def create_completion(self, request: CompletionRequest, raw_request: Any) -> PlainReply:
        return await self._answer(request)


@dataclass
class StubModels:
    """vLLM's `OpenAIServingModels`: the one served model."""

    async def show_available_models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=SERVED_MODEL, root=SERVED_MODEL)])


@dataclass(frozen=True)
class Opened:
    """One `open_sampler` call: what the API asked for, and the sampler it got."""

    request: ChatCompletionRequest | CompletionRequest
    request_id: str
    slots: int
    sampler: FakeSampler
    certainty_source: str | None = None


@dataclass
class StubEngine:
    """`VllmEngine` as the routes see it. Each strategy request gets a fresh
    `FakeSampler(script)`; `open_error` makes `open_sampler` raise instead (a refusal of
    vLLM's prompt rendering or admission check)."""

    script: Sequence[Scripted] = ()
    usage: SamplerUsage = field(default_factory=lambda: SamplerUsage(
        prompt_tokens=11, completion_tokens=42, sub_requests=3, aborted=1, prompts=1))
    open_error: BaseException | None = None
    alive: bool = True
    chat: StubServing = field(default_factory=StubServing)
    completion: StubServing = field(default_factory=StubServing)
    models: StubModels = field(default_factory=StubModels)
    opened: list[Opened] = field(default_factory=list)

    async def open_sampler(
        self, request: ChatCompletionRequest | CompletionRequest, request_id: str, slots: int,
        certainty_source: str | None = None,
    ) -> OpenedSampler:
        if self.open_error is not None:
            raise self.open_error
        sampler = FakeSampler(self.script)
        self.opened.append(Opened(request, request_id, slots, sampler, certainty_source))
        kind: Literal["chat", "completion"] = (
            "chat" if isinstance(request, ChatCompletionRequest) else "completion")
        # vLLM's default temperature is 1.0; 0 is kept (greedy), which `or` would lose.
        temperature = 1.0 if request.temperature is None else request.temperature
        return OpenedSampler(sampler=sampler, usage=self.usage, kind=kind, model=SERVED_MODEL,
                             temperature=temperature)

    @property
    def sampler(self) -> FakeSampler:
        """The sampler of the only strategy request opened so far."""
        assert len(self.opened) == 1, f"{len(self.opened)} samplers were opened"
        return self.opened[0].sampler
