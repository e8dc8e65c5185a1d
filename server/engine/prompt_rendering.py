"""Rendering a strategy request's prompts with vLLM's own serving code.

A strategy samples the request's conversation as it came, or continued by extra messages (a
draft and the instruction to criticise it). Both are rendered exactly as `vllm serve` renders a
request (chat template, tokenizer, model and length checks) by the serving object of the
request's endpoint; the continued conversation is the request itself with the extra messages
appended, so the rendered prompt starts with the request's own prompt and shares its KV blocks.
A completion request is plain text: extra messages continue it as text, one paragraph each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.entrypoints.serve.utils.api_utils import get_max_tokens
from vllm.renderers.inputs.preprocess import extract_prompt_components

from server.engine.vllm_sampler import PromptRenderer, RenderedPrompt
from server.exceptions import InvalidRequest, ServingRefused
from strategies.base import Message

if TYPE_CHECKING:
    from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
    from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
    from vllm.sampling_params import SamplingParams

__all__ = ["prompt_renderer", "request_sampling_params"]


def _continued_chat(request: ChatCompletionRequest,
                    extra: tuple[Message, ...]) -> ChatCompletionRequest:
    turns = [{"role": m.role, "content": m.content} for m in extra]
    # The extra turns end the conversation: the model answers after them.
    return request.model_copy(update={"messages": [*request.messages, *turns],
                                      "add_generation_prompt": True,
                                      "continue_final_message": False})


def _continued_completion(request: CompletionRequest,
                          extra: tuple[Message, ...]) -> CompletionRequest:
    if not isinstance(request.prompt, str):
        raise InvalidRequest("this strategy continues the prompt with text: send the prompt as "
                             "a string, not as token ids", param="prompt",
                             code="unsupported_with_strategy")
    text = request.prompt + "".join(f"\n\n{m.content}" for m in extra)
    return request.model_copy(update={"prompt": text})


def _single(serving: Any, engine_inputs: list[Any]) -> RenderedPrompt:
    if len(engine_inputs) != 1:
        raise InvalidRequest("a strategy request takes one prompt", param="prompt",
                             code="unsupported_with_strategy")
    (engine_input,) = engine_inputs
    tokens = len(extract_prompt_components(serving.model_config, engine_input).token_ids or [])
    # The request's own max_tokens left out: the most any sample of this prompt may generate.
    limit = get_max_tokens(serving.model_config.max_model_len, None, tokens, {},
                           serving.override_max_tokens)
    return RenderedPrompt(engine_input, tokens, limit)


def prompt_renderer(
    serving: OpenAIServingChat | OpenAIServingCompletion,
    request: ChatCompletionRequest | CompletionRequest,
) -> PromptRenderer:
    """A function that renders `request`, continued by extra messages, for the engine."""

    async def render(extra: tuple[Message, ...]) -> RenderedPrompt:
        if isinstance(request, ChatCompletionRequest):
            continued = _continued_chat(request, extra) if extra else request
            rendered = await serving.render_chat_request(continued)  # type: ignore[union-attr]
            if isinstance(rendered, ErrorResponse):
                raise ServingRefused.from_response(rendered)
            return _single(serving, rendered[1])
        continued_text = _continued_completion(request, extra) if extra else request
        inputs = await serving.render_completion_request(continued_text)  # type: ignore[union-attr]
        if isinstance(inputs, ErrorResponse):
            raise ServingRefused.from_response(inputs)
        return _single(serving, inputs)

    return render


def request_sampling_params(
    serving: OpenAIServingChat | OpenAIServingCompletion,
    request: ChatCompletionRequest | CompletionRequest,
    prompt: RenderedPrompt,
) -> SamplingParams:
    """The request's own sampling parameters for its prompt, as vLLM's serving code derives
    them (server defaults from the model's generation config, max_tokens capped by context)."""
    max_tokens = get_max_tokens(
        serving.model_config.max_model_len,
        getattr(request, "max_completion_tokens", None) or request.max_tokens,
        prompt.num_tokens,
        serving.default_sampling_params,
        serving.override_max_tokens,
    )
    return request.to_sampling_params(max_tokens, serving.default_sampling_params)
