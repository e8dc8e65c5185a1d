"""Tool calls and JSON answers under a strategy, in process: the chosen sample's calls come back
as vLLM returns them (message.tool_calls, finish_reason, streamed tool-call deltas) and the
official openai SDK parses them; strategies that cannot vote over calls refuse tools."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from server.engine.vllm import OpenedSampler
from strategies.base import ToolCall
from tests.api.asgi_client import CHAT, AppFactory, body_for, client_for, error_of, sse_data
from tests.api.asgi_client import sse_events as split_events
from tests.api.stub_engine import SERVED_MODEL, StubEngine
from tests.unit.fake_sampler import Scripted

pytestmark = pytest.mark.anyio

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
PARIS = ToolCall("get_weather", '{"city": "Paris"}')
PARIS_SPACED = ToolCall("get_weather", '{ "city" : "Paris" }')
LONDON = ToolCall("get_weather", '{"city": "London"}')
SC3 = {"name": "self_consistency", "max_samples": 3, "stop": "fixed",
       "return_candidates": True}


def made(*tool_calls: ToolCall, certainty: float, choice: str = "required",
         content: str | None = None) -> Scripted:
    return Scripted(json.dumps([{"name": c.name, "parameters": json.loads(c.arguments)}
                                for c in tool_calls]),
                    certainty=certainty, tool_choice=choice,  # type: ignore[arg-type]
                    tool_calls=tool_calls, content=content)


@dataclasses.dataclass
class ToolReadingStub(StubEngine):
    """The stub as the in-process engine answers a request with tools: its samples carry the
    calls its tool parser read (scripted here)."""

    async def open_sampler(self, *args: Any, **kwargs: Any) -> OpenedSampler:
        opened = await super().open_sampler(*args, **kwargs)
        return dataclasses.replace(opened, reads_tool_calls=True)


@pytest.fixture
def stub() -> StubEngine:
    return ToolReadingStub(script=[made(PARIS, certainty=1.0), made(LONDON, certainty=5.0),
                                   made(PARIS_SPACED, certainty=2.0)])


@pytest.fixture
async def sdk(make_app: AppFactory) -> AsyncIterator[openai.AsyncOpenAI]:
    async with client_for(make_app()) as http:
        yield openai.AsyncOpenAI(base_url="http://test/v1", api_key="unused", http_client=http,
                                 max_retries=0)


def chunks_of(response: httpx.Response) -> list[dict[str, Any]]:
    events = [event for event in split_events(response.text) if not event.startswith(":")]
    assert events[-1] == "data: [DONE]"
    return [sse_data(event) for event in events[:-1]]


async def test_self_consistency_returns_the_voted_call_as_vllm_does(
    client: httpx.AsyncClient, stub: StubEngine
) -> None:
    response = await client.post(CHAT, json=body_for(
        CHAT, tools=[WEATHER, TIME], tool_choice="required", strategy=SC3))

    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] == ""  # vLLM's content for a required call
    (tool_call,) = message["tool_calls"]
    assert tool_call["type"] == "function"
    assert tool_call["id"].startswith("chatcmpl-tool-")
    assert tool_call["function"] == {"name": "get_weather", "arguments": '{ "city" : "Paris" }'}
    strategy = response.json()["strategy"]
    assert strategy["answer"] == 'get_weather({"city":"Paris"})'
    assert strategy["votes"] == {'get_weather({"city":"Paris"})': 2,
                                 'get_weather({"city":"London"})': 1}
    assert strategy["tool_vote"] == "name_args"
    assert [c["answer"] for c in strategy["candidates"]] == [
        'get_weather({"city":"Paris"})', 'get_weather({"city":"London"})',
        'get_weather({"city":"Paris"})']
    assert [c["chosen"] for c in strategy["candidates"]] == [False, False, True]


async def test_the_openai_sdk_parses_the_call(sdk: openai.AsyncOpenAI) -> None:
    completion = await sdk.chat.completions.create(
        model=SERVED_MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER], tool_choice="required",  # type: ignore[list-item]
        extra_body={"strategy": {"name": "best_of_n", "n": 3, "tool_vote": "name"}})

    (tool_call,) = completion.choices[0].message.tool_calls or []
    assert tool_call.function.name == "get_weather"
    assert json.loads(tool_call.function.arguments) == {"city": "London"}  # most certain
    assert completion.choices[0].finish_reason == "tool_calls"


async def test_a_streamed_call_arrives_as_tool_call_deltas(
    sdk: openai.AsyncOpenAI, client: httpx.AsyncClient
) -> None:
    raw = await client.post(CHAT, json=body_for(
        CHAT, tools=[WEATHER], tool_choice="required", strategy=SC3, stream=True))
    chunks = chunks_of(raw)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    calls = [d["tool_calls"] for d in deltas if d.get("tool_calls")]
    first = calls[0][0]
    assert (first["index"], first["type"], first["function"]["name"]) == (
        0, "function", "get_weather")
    assert first["id"].startswith("chatcmpl-tool-")
    assert all("id" not in c[0] and "name" not in c[0]["function"] for c in calls[1:])
    assert "".join(c[0]["function"]["arguments"] for c in calls) == '{ "city" : "Paris" }'
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["strategy"]["answer"] == 'get_weather({"city":"Paris"})'

    # and the SDK's own stream accumulation rebuilds the call
    stream = await sdk.chat.completions.create(
        model=SERVED_MODEL, messages=[{"role": "user", "content": "Weather?"}], stream=True,
        tools=[WEATHER], tool_choice="required",  # type: ignore[list-item]
        extra_body={"strategy": SC3})
    arguments, names, finish = "", [], None
    async for chunk in stream:
        for delta_call in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            names += [delta_call.function.name] if delta_call.function.name else []
            arguments += delta_call.function.arguments or ""
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert (names, json.loads(arguments), finish) == (["get_weather"], {"city": "Paris"},
                                                      "tool_calls")


async def test_a_named_function_finishes_with_stop_as_vllm_answers_it(
    client: httpx.AsyncClient, stub: StubEngine
) -> None:
    stub.script = [made(PARIS, certainty=1.0, choice="named")]
    response = await client.post(CHAT, json=body_for(
        CHAT, tools=[WEATHER], strategy={"name": "best_of_n", "n": 1},
        tool_choice={"type": "function", "function": {"name": "get_weather"}}))

    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


async def test_with_auto_a_text_answer_can_win(client: httpx.AsyncClient, stub: StubEngine) -> None:
    stub.script = [Scripted("The answer is 4.", certainty=1.0, tool_choice="auto",
                            content="The answer is 4."),
                   Scripted("So the answer is 4.", certainty=2.0, tool_choice="auto",
                            content="So the answer is 4."),
                   made(PARIS, certainty=9.0, choice="auto")]
    response = await client.post(CHAT, json=body_for(CHAT, tools=[WEATHER], strategy=SC3))

    body = response.json()
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["content"] == "So the answer is 4."
    assert not body["choices"][0]["message"].get("tool_calls")
    assert body["strategy"]["votes"] == {"4": 2, 'get_weather({"city":"Paris"})': 1}


async def test_a_multi_turn_tool_conversation_works_with_a_strategy(
    client: httpx.AsyncClient, stub: StubEngine
) -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
    ]
    stub.script = [Scripted(f"It is 18 C. The answer is {t}.", certainty=c, tool_choice="auto",
                            content=f"It is 18 C. The answer is {t}.")
                   for t, c in (("18", 1.0), ("18", 2.0), ("20", 3.0))]
    response = await client.post(CHAT, json={"model": SERVED_MODEL, "messages": messages,
                                             "tools": [WEATHER], "strategy": SC3})

    assert response.status_code == 200, response.text
    assert response.json()["strategy"]["answer"] == "18"
    assert stub.opened[0].request.messages[2]["role"] == "tool"


@pytest.mark.parametrize("strategy", ["refine", "adaptive"])
async def test_a_strategy_that_cannot_vote_over_calls_refuses_tools(
    client: httpx.AsyncClient, stub: StubEngine, strategy: str
) -> None:
    response = await client.post(CHAT, json=body_for(CHAT, tools=[WEATHER], strategy=strategy))

    assert response.status_code == 400, response.text
    error = error_of(response)
    assert (error["param"], error["code"]) == ("tools", "unsupported_with_strategy")
    assert "self_consistency, best_of_n, deepconf and dsc" in error["message"]
    assert stub.opened == []


@pytest.mark.parametrize("strategy", [
    {"name": "deepconf", "max_samples": 4, "warmup": 2, "group_window": 16},
    {"name": "dsc", "max_samples": 3, "step": 3},
])
async def test_deepconf_and_dsc_vote_over_calls_too(
    client: httpx.AsyncClient, stub: StubEngine, strategy: dict[str, Any]
) -> None:
    """Most samples (and the most confident ones) call get_weather(Paris), written two ways:
    the canonical call wins, and the response carries it as vLLM's tool_calls."""
    # DeepConf watches each trace's tokens: the samples carry per-token certainties.
    def watched(call: ToolCall, value: float) -> Scripted:
        sample = made(call, certainty=value)
        return dataclasses.replace(sample, certainty=None,
                                   token_certainty=(value,) * len(sample.text.split()))

    stub.script = [watched(PARIS, 4.0), watched(LONDON, 1.0), watched(PARIS_SPACED, 5.0),
                   watched(PARIS, 3.0)]
    response = await client.post(CHAT, json=body_for(
        CHAT, tools=[WEATHER], tool_choice="required", strategy=strategy))

    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert response.json()["strategy"]["answer"] == 'get_weather({"city":"Paris"})'


async def test_a_server_that_cannot_read_calls_refuses_tools(make_app: AppFactory) -> None:
    plain_stub = StubEngine(script=[made(PARIS, certainty=1.0)])  # e.g. gateway mode
    app = make_app()
    app.state.engine = plain_stub
    async with client_for(app) as client:
        response = await client.post(CHAT, json=body_for(
            CHAT, tools=[WEATHER], tool_choice="required", strategy=SC3, stream=True))

    assert response.status_code == 400, response.text
    assert error_of(response)["param"] == "tools"
    assert plain_stub.opened[0].sampler.calls == []  # nothing was sampled


async def test_tool_choice_none_keeps_tools_out_of_the_vote(
    client: httpx.AsyncClient, stub: StubEngine
) -> None:
    stub.script = [Scripted(f"The answer is {a}.", certainty=1.0) for a in "44445555"]
    response = await client.post(CHAT, json=body_for(
        CHAT, tools=[WEATHER], tool_choice="none", strategy="dsc"))
    assert response.status_code == 200, response.text
    assert not response.json()["choices"][0]["message"].get("tool_calls")
    assert "tool_vote" not in response.json()["strategy"]


@pytest.mark.parametrize("response_format", [
    {"type": "json_object"},
    {"type": "json_schema", "json_schema": {"name": "a", "schema": {
        "type": "object", "properties": {"answer": {"type": "number"}}}}},
])
async def test_json_decoded_samples_are_voted_as_json(
    client: httpx.AsyncClient, stub: StubEngine, response_format: dict[str, Any]
) -> None:
    stub.script = [Scripted('{"answer": 4, "unit": "m"}', certainty=1.0),
                   Scripted('{ "unit":"m", "answer":4.0 }', certainty=2.0),
                   Scripted('{"answer": 5, "unit": "m"}', certainty=3.0)]
    response = await client.post(CHAT, json=body_for(
        CHAT, response_format=response_format, strategy=SC3))

    strategy = response.json()["strategy"]
    assert strategy["votes"] == {'{"answer":4,"unit":"m"}': 2, '{"answer":5,"unit":"m"}': 1}
    assert response.json()["choices"][0]["message"]["content"] == '{ "unit":"m", "answer":4.0 }'
    by_field = await client.post(CHAT, json=body_for(
        CHAT, response_format=response_format,
        strategy={**SC3, "answer_format": "json:/unit"}))
    assert by_field.json()["strategy"]["votes"] == {'"m"': 3}


@pytest.mark.parametrize(("choice", "calls", "content", "finish", "expected"), [
    pytest.param("required", (PARIS,), None, "stop", ("tool_calls", "", 1), id="required"),
    pytest.param("required", (PARIS,), None, "length", ("length", "", 1), id="required-cut"),
    pytest.param("named", (PARIS,), None, "stop", ("stop", "", 1), id="named"),
    pytest.param("auto", (PARIS,), "Let me check.", "stop", ("tool_calls", "Let me check.", 1),
                 id="auto-call"),
    pytest.param("auto", (), "Sunny.", "stop", ("stop", "Sunny.", 0), id="auto-text"),
    pytest.param("auto", (), "Sunny and", "length", ("length", "Sunny and", 0), id="auto-cut"),
])
def test_the_message_follows_vllms_rules(
    choice: str, calls: tuple[ToolCall, ...], content: str | None, finish: str,
    expected: tuple[str, str | None, int],
) -> None:
    from server.api.tool_call_messages import tool_message

    sample = Scripted("raw", certainty=1.0, tool_choice=choice,  # type: ignore[arg-type]
                      tool_calls=calls, content=content, finish_reason=finish).sample(0)
    rendered = tool_message(sample)
    assert rendered is not None
    assert (rendered.finish_reason, rendered.message.content,
            len(rendered.message.tool_calls)) == expected
    assert tool_message(Scripted("no tools").sample(0)) is None
