"""Tool calls and JSON answers under strategies, end to end: real vLLM, the embedded model, the
official openai SDK and LangChain's ChatOpenAI as the agent clients.

vLLM serves tools only with a tool parser (`--enable-auto-tool-choice --tool-call-parser`), so
this module starts one extra server with `hermes`. The embedded SmolLM2 cannot call tools well
on its own: the tests ask for tool_choice "required" or a named function, for which vLLM forces
the call shape with structured outputs (hermes: a structural tag around `<tool_call>` JSON; the
arguments follow the tool's schema because the tools are `strict`), so every sample is a
well-formed call and the tests are deterministic in shape (which city it picks is not
asserted).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from tests.servers import ServerProcess, running, start_refinery

CITIES = ["Paris", "London", "Tokyo"]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": CITIES}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a time zone.", "strict": True,
    "parameters": {"type": "object", "properties": {"zone": {"type": "string",
                                                            "enum": ["UTC", "CET"]}},
                   "required": ["zone"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]
SC4 = {"name": "self_consistency", "max_samples": 4, "stop": "fixed", "return_candidates": True}
# One call per sample (the grammar then closes the array): a tiny model would otherwise keep
# adding calls until max_tokens.
COMMON: dict[str, Any] = {"max_tokens": 96, "temperature": 0.8, "seed": 11,
                          "parallel_tool_calls": False}


@pytest.fixture(scope="module")
def tools_server(cache_dir: Path, logs_dir: Path) -> Iterator[ServerProcess]:
    with running(start_refinery(logs_dir, "--enable-auto-tool-choice", "--tool-call-parser",
                                "hermes", env={"REFINERY_CACHE": str(cache_dir)},
                                name="refinery-tools")) as live:
        yield live


@pytest.fixture(scope="module")
def tools_client(tools_server: ServerProcess) -> OpenAI:
    return OpenAI(base_url=f"{tools_server.base_url}/v1", api_key="unused", max_retries=0,
                  timeout=300)


def check_weather_call(name: str, arguments: str) -> None:
    assert name == "get_weather"
    assert json.loads(arguments)["city"] in CITIES


def test_a_required_call_under_self_consistency_is_a_tool_call_the_sdk_parses(
    tools_client: OpenAI,
) -> None:
    completion = tools_client.chat.completions.create(
        model="smollm2", messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
        extra_body={"strategy": SC4}, **COMMON)  # type: ignore[arg-type]

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id
    assert call.function.name in ("get_weather", "get_time")
    assert isinstance(json.loads(call.function.arguments), dict)
    strategy = completion.model_extra["strategy"]  # type: ignore[index]
    assert strategy["samples"] == 4 and strategy["tool_vote"] == "name_args"
    keys = [c["answer"] for c in strategy["candidates"]]
    assert all(key.startswith(("get_weather({", "get_time({")) for key in keys), keys
    assert sum(strategy["votes"].values()) == 4
    assert strategy["answer"] == max(strategy["votes"], key=strategy["votes"].get)


def test_a_strategy_answers_in_the_shape_a_plain_request_gets(tools_client: OpenAI) -> None:
    plain = tools_client.chat.completions.create(
        model="smollm2", messages=ASK, tools=[WEATHER], tool_choice="required", **COMMON)
    voted = tools_client.chat.completions.create(
        model="smollm2", messages=ASK, tools=[WEATHER], tool_choice="required",
        extra_body={"strategy": {"name": "best_of_n", "n": 3}}, **COMMON)

    for completion in (plain, voted):
        choice = completion.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content in ("", None)
        (call,) = choice.message.tool_calls or []
        check_weather_call(call.function.name, call.function.arguments)


def test_a_named_function_is_streamed_as_tool_call_deltas(tools_client: OpenAI) -> None:
    stream = tools_client.chat.completions.create(
        model="smollm2", messages=ASK, tools=[WEATHER, TIME], stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        extra_body={"strategy": {"name": "self_consistency", "max_samples": 3, "stop": "fixed",
                                 "tool_vote": "hierarchical"}}, **COMMON)
    names, arguments, finish, strategy = [], "", None, None
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                names += [call.function.name] if call.function and call.function.name else []
                arguments += call.function.arguments or "" if call.function else ""
            finish = choice.finish_reason or finish
        strategy = (chunk.model_extra or {}).get("strategy", strategy)

    assert names == ["get_weather"]
    check_weather_call(names[0], arguments)
    assert finish == "stop"  # vLLM's (and OpenAI's) finish_reason for a named function
    assert strategy is not None and strategy["tool_votes"] == {"get_weather(…)": 3}


def test_langchain_bind_tools_gets_the_voted_call(tools_server: ServerProcess) -> None:
    from langchain_core.messages import AIMessage
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(model="smollm2", base_url=f"{tools_server.base_url}/v1", api_key="unused",
                       temperature=0.8, max_tokens=96, max_retries=0, timeout=300,
                       extra_body={"strategy": SC4})
    agent = model.bind_tools([WEATHER], tool_choice="get_weather", parallel_tool_calls=False)
    reply = agent.invoke("What is the weather in Paris right now?")

    assert isinstance(reply, AIMessage)
    (call,) = reply.tool_calls
    assert call["name"] == "get_weather"
    assert call["args"]["city"] in CITIES
    assert call["id"]


def test_a_multi_turn_tool_conversation_keeps_working(tools_client: OpenAI) -> None:
    messages: list[Any] = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"},
    ]
    completion = tools_client.chat.completions.create(
        model="smollm2", messages=messages, tools=[WEATHER, TIME],
        extra_body={"strategy": SC4}, **COMMON)

    choice = completion.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert choice.message.tool_calls or choice.message.content
    assert completion.model_extra["strategy"]["samples"] == 4  # type: ignore[index]


def test_json_schema_answers_are_voted_as_json(tools_client: OpenAI) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string", "enum": CITIES},
                                               "sunny": {"type": "boolean"}},
              "required": ["city", "sunny"], "additionalProperties": False}
    completion = tools_client.chat.completions.create(
        model="smollm2", messages=ASK, max_tokens=64, temperature=0.8, seed=5,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": schema}},
        extra_body={"strategy": SC4})

    strategy = completion.model_extra["strategy"]  # type: ignore[index]
    keys = [c["answer"] for c in strategy["candidates"]]
    texts = [c["text"] for c in strategy["candidates"]]
    for key, text in zip(keys, texts, strict=True):
        assert key is None or json.loads(key) == json.loads(text)  # canonical form of the text
        assert key is None or key == json.dumps(json.loads(text), sort_keys=True,
                                                separators=(",", ":"))
    assert json.loads(completion.choices[0].message.content or "")["city"] in CITIES
    by_city = tools_client.chat.completions.create(
        model="smollm2", messages=ASK, max_tokens=64, temperature=0.8, seed=5,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": schema}},
        extra_body={"strategy": {**SC4, "answer_format": "json:/city"}})
    votes = by_city.model_extra["strategy"]["votes"]  # type: ignore[index]
    assert set(votes) <= {json.dumps(city) for city in CITIES}


def test_a_strategy_without_tool_votes_refuses_tools(tools_client: OpenAI) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as refused:
        tools_client.chat.completions.create(
            model="smollm2", messages=ASK, tools=[WEATHER], tool_choice="required",
            extra_body={"strategy": "refine"}, **COMMON)
    assert refused.value.body["param"] == "tools"  # type: ignore[index]


def test_a_server_without_a_tool_parser_refuses_tools_as_vllm_does(client: OpenAI) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="smollm2", messages=ASK, tools=[WEATHER], tool_choice="required",
            extra_body={"strategy": SC4}, **COMMON)
    assert "--tool-call-parser" in refused.value.message
