"""The Sampler of gateway mode: a strategy's samples drawn from an OpenAI-compatible backend.

The same contract as the in-process `VllmSampler` (docs/architecture.md, "The Sampler
contract"), over HTTP. What keeps a strategy request's samples together on one backend replica,
where their prompt's KV blocks are cached:

- **n-windows.** A `submit(count)` without a watcher is ONE backend request with `n=count`: a
  router (llm-d, KServe, production-stack, a plain Service) sends it to one replica, and vLLM
  prefills its prompt once for all `count` samples. Its samples are streamed and each
  awaitable resolves when its own choice finishes, so a strategy still judges them as they
  come. The price: they can only be aborted together. A cancelled sample of a window that still
  has live samples stops being waited for, but the backend finishes it (its tokens are counted
  as aborted); the request is closed, and the backend aborts what is left, once every sample of
  the window is finished or cancelled, or on `abort_outstanding()`.
- **One request per sample** where a sample must be stoppable alone: a `submit` with a watcher
  (DeepConf's terminated traces) sends `count` requests with `n=1`, each closed the moment its
  watcher says stop.
- **A session header** on every request of one strategy request (`--backend-session-header`,
  default `x-session-id`, one value per strategy request): production-stack's `session`
  routing and Ray Serve's consistent-hash router pin on it, so separate requests and later
  windows land where the first one did.

Continuations (a strategy's extra messages) are the request's conversation with the turns
appended (a completion's prompt continued as text, one paragraph per turn), as the in-process
renderer does. `json_schema` becomes `response_format: json_schema`; a non-zero `priority` is
sent as vLLM's `priority` field (the backend needs `--scheduling-policy priority`, or set
`REFINERY_BACKEND_PRIORITY=off`). Sample i of a seeded request gets seed + i: a window starting
at i sends seed + i, and vLLM seeds its n children seed + i + j.

Certainty is the top-20 estimate (`certainty_method` "topk", `topk_estimate`), or nothing and no
logprobs asked when the strategy reads none (`certainty_source` "none"); tokens and text
come from vLLM's streamed `token_ids` (`return_token_ids`), so the backend must be vLLM or
Refinery. Usage counts each distinct conversation's prompt once (from the backend's usage) and
every completion token as it arrives, aborted ones included.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from server.backend.backend_client import BackendClient, cancel_and_wait, transport_errors
from server.backend.backend_errors import BackendFailed, refusal_from_body
from server.backend.topk_estimate import TOPK, chat_confidences, completion_confidences
from server.engine.certainty.summary import summarise
from server.engine.vllm_sampler import SamplerUsage
from server.exceptions import InvalidRequest, ServingRefused
from server.metrics import SUBREQUEST_TOKENS, SUBREQUESTS_RUNNING
from strategies.base import (
    WATCHER_STOP,
    CertaintyMethod,
    CertaintySource,
    Message,
    Sample,
    TokenWatcher,
)

__all__ = ["RemoteSampler", "sub_request_base"]

# Request fields a sub-request sets itself (or that a strategy request never sends on).
_REPLACED_FIELDS = ("strategy", "stream", "stream_options", "n", "best_of", "use_beam_search",
                    "logprobs", "top_logprobs", "return_token_ids",
                    "return_tokens_as_token_ids", "priority")


def sub_request_base(body: Mapping[str, Any], kind: Literal["chat", "completion"], *,
                     logprobs: bool = True) -> dict[str, Any]:
    """The request's own fields (what its client set) plus what every sub-request asks for:
    a stream with usage on every chunk, token ids, and (unless `logprobs` is False: the
    strategy reads no certainty) the top-20 logprobs."""
    base = {key: value for key, value in body.items() if key not in _REPLACED_FIELDS}
    base.update(stream=True, stream_options={"include_usage": True,
                                             "continuous_usage_stats": True},
                return_token_ids=True, return_tokens_as_token_ids=True)
    if not logprobs:
        return base
    if kind == "chat":
        base.update(logprobs=True, top_logprobs=TOPK)
    else:
        base["logprobs"] = TOPK
    return base


@dataclass(frozen=True)
class _Call:
    """What one `submit` asked for, beyond the request's own parameters."""

    messages: tuple[Message, ...]
    max_tokens: int | None
    temperature: float | None
    json_schema: Mapping[str, Any] | None
    priority: int
    watch: TokenWatcher | None


@dataclass
class _Slot:
    """One sample of a window while it is generated."""

    index: int
    future: asyncio.Future[Sample]
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    certainty: list[float] = field(default_factory=list)
    cumulative: float | None = None
    running: bool = True


@dataclass
class _Window:
    """One backend request: `len(slots)` samples (n), from sample index `slots[0].index`."""

    call: _Call
    slots: list[_Slot]
    task: asyncio.Task[None] | None = None


class RemoteSampler:
    """Samples one request's conversation (optionally continued) on a remote backend."""

    def __init__(self, client: BackendClient, kind: Literal["chat", "completion"],
                 body: Mapping[str, Any], request_id: str, *, family: str = "",
                 certainty_source: CertaintySource | None = None) -> None:
        """`body`: the request as its client set it (a strategy request's fields, `strategy`
        included, which is dropped); `request_id`: the strategy request's id, sent as the
        session header's value. Certainty is the top-20 estimate unless `certainty_source`
        is "none": then no logprobs are asked for."""
        self._client = client
        self._kind = kind
        self._path = "chat/completions" if kind == "chat" else "completions"
        wanted = certainty_source != "none"
        self.certainty_method: CertaintyMethod | None = "topk" if wanted else None
        self._base = sub_request_base(body, kind, logprobs=wanted)
        self._seed = body.get("seed")
        self._headers = {client.config.session_header: request_id}
        self.family = family
        self.usage = SamplerUsage()
        self.progress: asyncio.Queue[str] = asyncio.Queue()
        self._next_index = 0
        self._windows: list[_Window] = []
        self._counted_prompts: set[tuple[Message, ...]] = set()

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
        call = _Call(tuple(messages), max_tokens, temperature, json_schema, priority, watch)
        sizes = [count] if watch is None else [1] * count
        loop = asyncio.get_running_loop()
        awaitables: list[Awaitable[Sample]] = []
        for size in sizes if count > 0 else ():
            slots = [_Slot(self._next_index + i, loop.create_future()) for i in range(size)]
            self._next_index += size
            window = _Window(call, slots)
            for slot in slots:
                slot.future.add_done_callback(functools.partial(self._on_done, window, slot))
            window.task = asyncio.create_task(self._drive(window))
            self._windows.append(window)
            awaitables.extend(slot.future for slot in slots)
        self.usage.sub_requests += max(0, count)
        SUBREQUESTS_RUNNING.inc(max(0, count))
        return awaitables

    def _request_body(self, call: _Call, start: int, count: int) -> dict[str, Any]:
        body = dict(self._base)
        if call.messages:
            if self._kind == "chat":
                turns = [{"role": m.role, "content": m.content} for m in call.messages]
                body["messages"] = [*body.get("messages", ()), *turns]
                # The extra turns end the conversation: the model answers after them.
                if "continue_final_message" in body:
                    body["continue_final_message"] = False
                if "add_generation_prompt" in body:
                    body["add_generation_prompt"] = True
            else:
                prompt = body.get("prompt")
                if not isinstance(prompt, str):
                    raise InvalidRequest("this strategy continues the prompt with text: send "
                                         "the prompt as a string, not as token ids",
                                         param="prompt", code="unsupported_with_strategy")
                body["prompt"] = prompt + "".join(f"\n\n{m.content}" for m in call.messages)
        body["n"] = count
        if self._seed is not None:
            body["seed"] = self._seed + start  # vLLM seeds child j of the window seed + j
        if call.temperature is not None:
            body["temperature"] = call.temperature
        if call.max_tokens is not None:
            if self._kind == "chat":
                body.pop("max_tokens", None)
                body["max_completion_tokens"] = call.max_tokens
            else:
                body["max_tokens"] = call.max_tokens
        if call.json_schema is not None:
            body.pop("structured_outputs", None)
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "refinery_schema",
                                                       "schema": dict(call.json_schema)}}
        if call.priority and self._client.config.send_priority:
            body["priority"] = call.priority
        return body

    async def _drive(self, window: _Window) -> None:
        """The window's request, read by a task of its own that only this one cancels (once:
        `cancel_and_wait`), so that closing its connection always completes."""
        reader = asyncio.create_task(self._read(window))
        try:
            await asyncio.shield(reader)
        except asyncio.CancelledError:
            await cancel_and_wait(reader)
            raise

    async def _read(self, window: _Window) -> None:
        """Send the window's request and feed its stream into the samples' futures."""
        try:
            body = self._request_body(window.call, window.slots[0].index, len(window.slots))
            response = await self._client.open(self._path, json_body=body, headers=self._headers)
            try:
                if response.status_code >= 400:
                    with transport_errors(self._client.config.timeout_s):
                        content = await response.aread()
                    raise refusal_from_body(response.status_code, content)
                async for chunk in self._client.events(response):
                    error = chunk.get("error")
                    if isinstance(error, dict):  # a failure after the backend's 200
                        code = error.get("code")
                        raise ServingRefused(code if isinstance(code, int) else 502,
                                             str(error.get("message") or "backend error"))
                    self._count_prompt(window.call.messages, chunk.get("usage"))
                    for choice in chunk.get("choices") or ():
                        self._absorb(window, choice)
                    if all(slot.future.done() for slot in window.slots):
                        return  # closing the stream aborts whatever the backend still runs
            finally:
                # Shielded: a second cancellation must not cut the close short, or the
                # connection stays open and the backend runs on.
                await asyncio.shield(response.aclose())
            raise BackendFailed("its stream ended before every sample had finished")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001  handed to every sample still waiting
            for slot in window.slots:
                if not slot.future.done():
                    self._stop_running(slot)
                    slot.future.set_exception(exc)
        finally:
            for slot in window.slots:
                if not slot.future.done():
                    slot.future.cancel()  # _on_done counts it as aborted

    def _count_prompt(self, messages: tuple[Message, ...], usage: Any) -> None:
        """Each distinct conversation's prompt once, from the first usage the backend sends."""
        if messages in self._counted_prompts or not isinstance(usage, dict):
            return
        tokens = usage.get("prompt_tokens")
        if isinstance(tokens, int):
            self._counted_prompts.add(messages)
            self.usage.prompt_tokens += tokens
            self.usage.prompts += 1
            SUBREQUEST_TOKENS.labels("prompt").inc(tokens)

    def _absorb(self, window: _Window, choice: Mapping[str, Any]) -> None:
        """One streamed delta of one choice (sample) of the window."""
        position = choice.get("index", 0)
        if not isinstance(position, int) or not 0 <= position < len(window.slots):
            return
        slot = window.slots[position]
        token_ids = [int(t) for t in choice.get("token_ids") or ()]
        logprobs = choice.get("logprobs") or {}
        if self._kind == "chat":
            text = (choice.get("delta") or {}).get("content") or ""
            content = logprobs.get("content") or []
            confidences = chat_confidences(content)
            sampled = [float(entry["logprob"]) for entry in content]
        else:
            text = choice.get("text") or ""
            confidences = completion_confidences(logprobs.get("tokens") or [],
                                                 logprobs.get("top_logprobs") or [])
            sampled = [float(lp) for lp in logprobs.get("token_logprobs") or () if lp is not None]
        tokens = len(token_ids) or len(sampled)
        self.usage.completion_tokens += tokens
        if slot.future.done():  # cancelled by its strategy while its window runs on
            SUBREQUEST_TOKENS.labels("aborted").inc(tokens)
            return
        slot.text.append(text)
        slot.token_ids.extend(token_ids)
        slot.certainty.extend(confidences)
        if sampled:
            slot.cumulative = (slot.cumulative or 0.0) + sum(sampled)
        finish_reason = choice.get("finish_reason")
        if finish_reason is not None:
            self._finish(slot, finish_reason, choice.get("stop_reason"), stopped=False)
        elif window.call.watch is not None and window.call.watch(slot.certainty):
            self._finish(slot, WATCHER_STOP, None, stopped=True)

    def _stop_running(self, slot: _Slot) -> bool:
        """Mark the slot as no longer running; False if it already was."""
        if not slot.running:
            return False
        slot.running = False
        SUBREQUESTS_RUNNING.dec()
        return True

    def _finish(self, slot: _Slot, finish_reason: str, stop_reason: str | int | None, *,
                stopped: bool) -> None:
        self._stop_running(slot)
        if stopped:
            self.usage.aborted += 1
        SUBREQUEST_TOKENS.labels("aborted" if stopped else "completion").inc(len(slot.token_ids))
        summary = summarise(slot.certainty)
        slot.future.set_result(Sample(
            index=slot.index,
            text="".join(slot.text),
            token_ids=tuple(slot.token_ids),
            finish_reason=finish_reason,
            cumulative_logprob=slot.cumulative,
            certainty=summary.certainty if summary else None,
            lowest_group_certainty=summary.lowest_group_certainty if summary else None,
            token_certainty=tuple(slot.certainty),
            stop_reason=stop_reason,
            stopped_by_watcher=stopped,
        ))

    def _on_done(self, window: _Window, slot: _Slot, future: asyncio.Future[Sample]) -> None:
        """A sample cancelled (by its strategy, or because its window ended): count it as
        aborted; once no sample of the window is left waiting, stop the window's request."""
        if future.cancelled() and self._stop_running(slot):
            self.usage.aborted += 1
            SUBREQUEST_TOKENS.labels("aborted").inc(len(slot.token_ids))
        task = window.task
        if (future.cancelled() and task is not None and not task.done()
                and not task.cancelling() and all(s.future.done() for s in window.slots)):
            task.cancel()

    def report_progress(self, text: str) -> None:
        self.progress.put_nowait(" ".join(text.split()))  # one line, whatever it was given

    async def abort_outstanding(self) -> None:
        """Close every backend request still running (the backend aborts them) and wait until
        each is gone; every sample still waiting is cancelled."""
        running = [w.task for w in self._windows if w.task is not None and not w.task.done()]
        for task in running:
            if not task.cancelling():
                task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
