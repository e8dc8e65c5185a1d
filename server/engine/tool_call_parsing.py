"""Reading a strategy sample's tool calls with vLLM's own parser for the served model.

A request with `tools` (and a tool_choice other than "none") is rendered by vLLM's serving
code, which refuses what the server's flags cannot honour exactly as `vllm serve` does
("auto" needs `--enable-auto-tool-choice --tool-call-parser …`; "required" and a named function
need the parser) and adjusts the request so that the output is forced into the parser's call
shape (the parser's `adjust_request`: for "required" or a named function a structural tag for
parsers with an xgrammar model, e.g. hermes' `<tool_call>` envelope, else vLLM's JSON array of
calls; arguments follow each tool's schema when the tool is `strict` or the server runs with
`--tool-strict-level parameter`). The request's sampling parameters are derived after that
rendering, so every sample is decoded under the same grammar.

Each finished sample is then read by a fresh instance of the same parser class
`OpenAIServingChat` builds (`parser_cls`: the tool parser composed with any reasoning parser;
parsers are stateful, one per output), with the same arguments, and vLLM's
`parallel_tool_calls` filter applied. Strategies get plain `ToolCall(name, arguments)` tuples
and the content the parser left; nothing here parses text itself.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from strategies.base import Sample, ToolCall, ToolChoice

if TYPE_CHECKING:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat

__all__ = ["ToolCallReader", "request_tool_choice", "tool_call_reader"]

logger = logging.getLogger(__name__)


def request_tool_choice(request: Any) -> ToolChoice | None:
    """How a chat request offers tools: None without tools or with tool_choice "none"."""
    from vllm.entrypoints.openai.chat_completion.protocol import (
        ChatCompletionNamedToolChoiceParam,
    )

    choice = getattr(request, "tool_choice", None)
    if not getattr(request, "tools", None) or choice == "none":
        return None
    if isinstance(choice, ChatCompletionNamedToolChoiceParam):
        return "named"
    return "required" if choice == "required" else "auto"


class ToolCallReader:
    """Fills a sample's `tool_choice`, `tool_calls` and `content` from its text, with the
    served model's vLLM parser. Built once per strategy request (after its rendering)."""

    def __init__(self, serving: OpenAIServingChat, request: ChatCompletionRequest,
                 choice: ToolChoice, prompt_token_ids: Sequence[int]) -> None:
        self._serving = serving
        self._request = request
        self.choice: ToolChoice = choice
        self._prompt_token_ids = list(prompt_token_ids)
        # As OpenAIServingChat._effective_chat_template_kwargs builds them for its parsers.
        self._template_kwargs = request.build_chat_params(
            serving.chat_template, serving.chat_template_content_format,
        ).with_defaults(serving.default_chat_template_kwargs).chat_template_kwargs

    def _parse(self, sample: Sample) -> tuple[str | None, list[Any]]:
        serving = self._serving
        assert serving.parser_cls is not None
        parser = serving.parser_cls(serving.renderer.tokenizer, self._request.tools,
                                    chat_template_kwargs=self._template_kwargs,
                                    model_config=serving.model_config)
        parser.set_prompt_token_ids(self._prompt_token_ids)
        _reasoning, content, calls = parser.parse(
            sample.text, self._request, enable_auto_tools=serving.enable_auto_tools,
            model_output_token_ids=sample.token_ids)
        return content, list(calls or [])

    def __call__(self, sample: Sample) -> Sample:
        from vllm.entrypoints.serve.utils.tool_calls_utils import (
            maybe_filter_parallel_tool_calls,
        )

        try:
            content, calls = self._parse(sample)
        except Exception:  # a parser bug must not fail the request: the sample made no call
            logger.exception("the tool parser failed on a strategy sample; read as text")
            content, calls = sample.text, []
        calls = maybe_filter_parallel_tool_calls(calls, self._request)
        return dataclasses.replace(
            sample, tool_choice=self.choice, content=content,
            tool_calls=tuple(ToolCall(call.name, call.arguments, call.id) for call in calls))


def tool_call_reader(serving: OpenAIServingChat, request: ChatCompletionRequest,
                     engine_input: Any) -> ToolCallReader | None:
    """The reader for a rendered chat request that offers tools; None when it offers none, or
    when the server has no tool parser (vLLM's rendering has then refused what needs one)."""
    from vllm.renderers.inputs.preprocess import extract_prompt_components

    choice = request_tool_choice(request)
    parser_cls = serving.parser_cls
    if choice is None or parser_cls is None or parser_cls.tool_parser_cls is None:
        return None
    prompt_ids = extract_prompt_components(serving.model_config, engine_input).token_ids or []
    return ToolCallReader(serving, request, choice, prompt_ids)
