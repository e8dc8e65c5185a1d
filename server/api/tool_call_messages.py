"""The assistant message of a strategy's chosen sample when the request offered tools, as vLLM's
`OpenAIServingChat` builds it for a plain request, so an agent cannot tell the difference.

vLLM's rules (chat_completion/serving.py, `chat_completion_full_generator`): with tool_choice
"required" or a named function the message carries the calls and `content` "" when the parser
left none; with "auto" it carries the calls the parser found, else the text. `finish_reason` is
"tool_calls" for "auto" calls and for "required" (when the sample stopped), and the sample's own
for a named function (as OpenAI answers a forced function). Each call gets the parser's id or a
fresh `chatcmpl-tool-…` id. Streamed, the calls follow the content as vLLM's tool-call deltas:
per call a first delta with its index, id, type and name, then its arguments in pieces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vllm.entrypoints.generate.base.protocol import (
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    FunctionCall,
    ToolCall,
)
from vllm.entrypoints.openai.chat_completion.protocol import ChatMessage
from vllm.renderers.chat_utils import make_tool_call_id

from strategies.base import Sample

__all__ = ["ToolMessage", "tool_message"]

# Pieces of a call's JSON arguments, each with the whitespace before it, as the text streams.
_ARGUMENT_PIECES = re.compile(r"\s*[^\s,:]+[,:]?|\s*[,:]|\s+")


@dataclass(frozen=True)
class ToolMessage:
    """The chosen sample's message and finish_reason, rendered once per response (the call
    ids of the JSON body and of the stream are the same)."""

    message: ChatMessage
    finish_reason: str

    def deltas(self) -> list[DeltaMessage]:
        """The calls as vLLM streams them (after any content, which streams as text)."""
        deltas = []
        for index, call in enumerate(self.message.tool_calls):
            deltas.append(DeltaMessage(tool_calls=[DeltaToolCall(
                index=index, id=call.id, type="function",
                function=DeltaFunctionCall(name=call.function.name, arguments=""))]))
            deltas.extend(
                DeltaMessage(tool_calls=[DeltaToolCall(
                    index=index, function=DeltaFunctionCall(arguments=piece))])
                for piece in _ARGUMENT_PIECES.findall(call.function.arguments))
        return deltas


def tool_message(sample: Sample) -> ToolMessage | None:
    """vLLM's message for a sample drawn with tools offered; None for one drawn without."""
    if sample.tool_choice is None:
        return None
    calls = [ToolCall(id=call.id or make_tool_call_id(),
                      function=FunctionCall(name=call.name, arguments=call.arguments))
             for call in sample.tool_calls]
    own_finish = sample.finish_reason or "stop"
    if sample.tool_choice in ("required", "named"):
        message = ChatMessage(role="assistant", content=sample.content or "", tool_calls=calls)
        forced_call = sample.tool_choice == "required" and sample.finish_reason == "stop"
        return ToolMessage(message, "tool_calls" if forced_call else own_finish)
    if calls:
        message = ChatMessage(role="assistant", content=sample.content, tool_calls=calls)
        return ToolMessage(message, "tool_calls")
    return ToolMessage(ChatMessage(role="assistant", content=sample.content), own_finish)
