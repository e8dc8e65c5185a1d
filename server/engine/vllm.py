"""The in-process vLLM engine and vLLM's own OpenAI serving objects on top of it.

Plain requests are served by vLLM's `OpenAIServingChat` / `OpenAIServingCompletion` /
`OpenAIServingModels` built by vLLM's `init_app_state`, on the same `AsyncLLM` that strategy
samplers submit to, so their behaviour is `vllm serve`'s by construction.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from argparse import Namespace
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from starlette.datastructures import State

from server.engine.vllm_sampler import SamplerUsage, VllmSampler
from strategies.base import CertaintySource, Sampler

if TYPE_CHECKING:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
    from vllm.entrypoints.openai.models.serving import OpenAIServingModels
    from vllm.v1.engine.async_llm import AsyncLLM

__all__ = ["OpenedSampler", "VllmEngine", "request_family"]

logger = logging.getLogger(__name__)


def request_family(model: str, request: ChatCompletionRequest | CompletionRequest) -> str:
    """The served model plus a hash of the request's system prompt (its system and developer
    messages; none for a completion): requests of one family are alike enough to share
    statistics (DSC's stopping sizes)."""
    messages = getattr(request, "messages", None) or []
    system = [json.dumps(m.get("content"), sort_keys=True, default=str) for m in messages
              if isinstance(m, dict) and m.get("role") in ("system", "developer")]
    digest = hashlib.sha256("\n".join(system).encode()).hexdigest()[:12]
    return f"{model}:{digest}"


@dataclass(frozen=True)
class OpenedSampler:
    """A strategy request's sampler, with what the API needs to check and answer it."""

    sampler: Sampler
    usage: SamplerUsage  # updated by the sampler as it works
    kind: Literal["chat", "completion"]
    model: str  # the served model name, for the response
    temperature: float  # the request's effective temperature (server defaults applied)
    progress: asyncio.Queue[str] | None = None  # the strategy's progress notes, one line each
    # True when the samples carry their tool calls (server.engine.tool_call_parsing).
    reads_tool_calls: bool = False


class VllmEngine:
    """Owns one `AsyncLLM` (engine core in a child process) and the serving objects."""

    def __init__(self, async_llm: AsyncLLM, serving: State, shutdown_timeout: float | None):
        self.async_llm = async_llm
        self._serving = serving
        self._shutdown_timeout = shutdown_timeout

    @classmethod
    async def start(cls, args: Namespace) -> VllmEngine:
        """Build the engine from parsed `vllm serve` arguments.

        Creating `AsyncLLM` blocks for the whole model load (it spawns the engine core and waits
        for its handshake), so it runs in a worker thread: the event loop keeps answering
        `/health` and `/ready` meanwhile. AsyncLLM starts its output handler lazily on the
        first request when it is constructed outside a running loop.
        """
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        from server.engine.vllm_internals import SERVING_INTERNALS, check_internals

        check_internals(SERVING_INTERNALS)
        engine_args = AsyncEngineArgs.from_cli_args(args)
        vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
        async_llm = await asyncio.to_thread(
            AsyncLLM.from_vllm_config,
            vllm_config=vllm_config,
            usage_context=UsageContext.OPENAI_API_SERVER,
            enable_log_requests=engine_args.enable_log_requests,
            aggregate_engine_logging=engine_args.aggregate_engine_logging,
            disable_log_stats=engine_args.disable_log_stats,
        )
        try:
            await async_llm.reset_mm_cache()
            supported_tasks = await async_llm.get_supported_tasks()
            if "generate" not in supported_tasks:
                raise RuntimeError(
                    f"model {args.model!r} does not support text generation "
                    f"(supported tasks: {', '.join(supported_tasks)})"
                )
            serving = State()
            await init_app_state(async_llm, serving, args, supported_tasks)
        except BaseException:
            async_llm.shutdown(timeout=vllm_config.shutdown_timeout)
            raise
        return cls(async_llm, serving, vllm_config.shutdown_timeout)

    @property
    def chat(self) -> OpenAIServingChat:
        return self._serving.openai_serving_chat

    @property
    def completion(self) -> OpenAIServingCompletion:
        return self._serving.openai_serving_completion

    @property
    def models(self) -> OpenAIServingModels:
        return self._serving.openai_serving_models

    async def open_sampler(
        self, request: ChatCompletionRequest | CompletionRequest, request_id: str, slots: int,
        certainty_source: CertaintySource | None = None,
    ) -> OpenedSampler:
        """Render the request's prompt (vLLM's checks: model, length, template), derive its
        sampling parameters, and check that the engine's queue has room for `slots` sequences,
        all before anything is sent to the client; then a sampler over it."""
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        from server.engine.prompt_rendering import prompt_renderer, request_sampling_params
        from server.engine.tool_call_parsing import tool_call_reader

        is_chat = isinstance(request, ChatCompletionRequest)
        serving = self.chat if is_chat else self.completion
        render = prompt_renderer(serving, request)
        prompt = await render(())
        # After rendering: vLLM's rendering forces "required"/named tool calls into its JSON
        # shape (structured outputs on the request), which the sampling parameters then carry.
        params = request_sampling_params(serving, request, prompt)
        self.async_llm.check_admission(slots)
        model = serving.models.model_name()
        reader = tool_call_reader(self.chat, request, prompt.engine_input) if is_chat else None
        sampler = VllmSampler(self.async_llm, render, prompt, params, request_id,
                              family=request_family(model, request),
                              certainty_source=certainty_source, read_tool_calls=reader)
        return OpenedSampler(sampler, sampler.usage, "chat" if is_chat else "completion",
                             model, params.temperature, sampler.progress,
                             reads_tool_calls=reader is not None)

    @property
    def alive(self) -> bool:
        """False once the engine core has died (the server then reports not ready)."""
        return not self.async_llm.errored

    async def shutdown(self) -> None:
        """Stop the engine core process; blocking, so it runs in a thread."""
        await asyncio.to_thread(self.async_llm.shutdown, timeout=self._shutdown_timeout)
