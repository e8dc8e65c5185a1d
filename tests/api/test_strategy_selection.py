"""Which strategy a request selects (body `strategy`, then a model alias), and the 400s for a
selection or request fields a strategy cannot honour, all answered before any sampling."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from vllm.exceptions import QueueOverflowError, VLLMValidationError

from strategies import PRESETS
from tests.api.asgi_client import (
    CHAT,
    COMPLETIONS,
    AppFactory,
    body_for,
    client_for,
    error_of,
)
from tests.api.stub_engine import SERVED_MODEL, StubEngine
from tests.unit.fake_sampler import answers

pytestmark = pytest.mark.anyio


@pytest.fixture
def stub() -> StubEngine:
    return StubEngine(script=answers(*["4"] * 16, certainty=1.0))


@pytest.mark.parametrize(("fields", "name", "preset", "slots"), [
    pytest.param({"model": "smollm2+bon8",
                  "strategy": {"name": "self_consistency", "stop": "fixed", "max_samples": 3}},
                 "self_consistency", None, 3, id="body-object-beats-alias"),
    pytest.param({"model": "smollm2+bon8", "strategy": "sc8"}, "self_consistency", "sc8", 8,
                 id="body-preset-beats-alias"),
    pytest.param({"strategy": "sc8"}, "self_consistency", "sc8", 8, id="body-preset"),
    pytest.param({"strategy": {"name": "best_of_n", "n": 5}}, "best_of_n", None, 5,
                 id="body-object"),
    pytest.param({"model": "smollm2+bon8"}, "best_of_n", "bon8", 8, id="alias-alone"),
    pytest.param({"model": "smollm2+esc"}, "self_consistency", "esc", 16, id="esc-alias"),
])
@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
async def test_strategy_comes_from_the_body_before_the_model_alias(
    client: httpx.AsyncClient, stub: StubEngine, path: str, fields: dict[str, Any], name: str,
    preset: str | None, slots: int,
) -> None:
    response = await client.post(path, json=body_for(path, **fields))

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["strategy"]["name"], body["strategy"]["preset"]) == (name, preset)
    # The alias is stripped before vLLM sees the model name, and the sampler is opened with
    # room for the strategy's whole sample budget.
    assert stub.sampler is stub.opened[0].sampler
    assert stub.opened[0].request.model == SERVED_MODEL
    assert body["model"] == SERVED_MODEL
    assert stub.opened[0].slots == slots == body["strategy"]["max_samples"]


async def test_a_model_with_a_plus_but_no_preset_is_a_plain_request(
    client: httpx.AsyncClient, stub: StubEngine
) -> None:
    response = await client.post(CHAT, json=body_for(CHAT, model="org/model+v2"))

    assert response.status_code == 200, response.text
    assert "strategy" not in response.json()
    assert stub.opened == []
    assert stub.chat.requests[0].model == "org/model+v2"


async def test_the_model_list_offers_one_alias_per_preset(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/models")

    assert response.status_code == 200, response.text
    cards = {card["id"]: card for card in response.json()["data"]}
    assert set(cards) == {SERVED_MODEL} | {f"{SERVED_MODEL}+{preset}" for preset in PRESETS}
    assert {cards[f"{SERVED_MODEL}+{preset}"]["parent"] for preset in PRESETS} == {SERVED_MODEL}


INVALID_SELECTIONS = [
    pytest.param({"strategy": "nope"}, "strategy", "unknown_strategy", id="unknown-preset"),
    pytest.param({"model": "smollm2+bon8", "strategy": "nope"}, "strategy", "unknown_strategy",
                 id="unknown-preset-with-alias"),
    pytest.param({"strategy": {"name": "nope"}}, "strategy.name", "unknown_strategy",
                 id="unknown-name"),
    pytest.param({"strategy": {"n": 4}}, "strategy.name", "unknown_strategy", id="no-name"),
    pytest.param({"strategy": {"name": "best_of_n", "bogus": 1}}, "strategy.bogus",
                 "invalid_strategy_option", id="unknown-option"),
    pytest.param({"strategy": {"name": "best_of_n", "n": 0}}, "strategy.n",
                 "invalid_strategy_option", id="below-bounds"),
    pytest.param({"strategy": {"name": "self_consistency", "confidence": 1.5}},
                 "strategy.confidence", "invalid_strategy_option", id="above-bounds"),
    pytest.param({"strategy": {"name": "self_consistency", "stop": "never"}}, "strategy.stop",
                 "invalid_strategy_option", id="not-a-choice"),
    pytest.param({"strategy": {"name": "best_of_n", "answer_format": "regex:("}},
                 "strategy.answer_format", "invalid_strategy_option", id="bad-answer-format"),
    pytest.param({"strategy": 8}, "strategy", "invalid_strategy", id="number"),
    pytest.param({"strategy": ["bon8"]}, "strategy", "invalid_strategy", id="list"),
]

UNSUPPORTED_WITH_STRATEGY = [
    pytest.param(CHAT, {"n": 2}, "n", id="chat-n"),
    pytest.param(COMPLETIONS, {"n": 2}, "n", id="completion-n"),
    pytest.param(CHAT, {"logprobs": True}, "logprobs", id="chat-logprobs"),
    pytest.param(CHAT, {"logprobs": True, "top_logprobs": 3}, "logprobs",
                 id="chat-top-logprobs"),
    pytest.param(COMPLETIONS, {"logprobs": 1}, "logprobs", id="completion-logprobs"),
    pytest.param(CHAT, {"use_beam_search": True}, "use_beam_search", id="beam-search"),
    pytest.param(COMPLETIONS, {"echo": True}, "echo", id="echo"),
    pytest.param(COMPLETIONS, {"suffix": "!"}, "suffix", id="suffix"),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("fields", "param", "code"), INVALID_SELECTIONS)
async def test_an_invalid_strategy_selection_is_a_400_naming_the_option(
    client: httpx.AsyncClient, stub: StubEngine, fields: dict[str, Any], param: str, code: str,
    stream: bool,
) -> None:
    response = await client.post(CHAT, json=body_for(CHAT, stream=stream, **fields))

    assert response.status_code == 400, response.text
    error = error_of(response)
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert stub.opened == []


@pytest.mark.parametrize(("fields", "param"), [
    pytest.param({"strategy": "bon8"}, "strategy.n", id="preset-n"),
    pytest.param({"strategy": "sc8"}, "strategy.max_samples", id="preset-max-samples"),
    pytest.param({"model": "smollm2+sc8"}, "strategy.max_samples", id="alias"),
    pytest.param({"strategy": {"name": "self_consistency"}}, "strategy.max_samples",
                 id="default-options"),
])
async def test_a_sample_budget_over_the_server_cap_is_a_400_naming_the_budget_option(
    make_app: AppFactory, stub: StubEngine, fields: dict[str, Any], param: str
) -> None:
    async with client_for(make_app(max_samples=4)) as client:
        refused = await client.post(CHAT, json=body_for(CHAT, **fields))
        at_cap = await client.post(CHAT, json=body_for(
            CHAT, strategy={"name": "best_of_n", "n": 4}))

    assert refused.status_code == 400, refused.text
    error = error_of(refused)
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error", param, "over_server_cap")
    assert "cap of 4" in error["message"]
    assert at_cap.status_code == 200, at_cap.text
    assert [opened.slots for opened in stub.opened] == [4]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("path", "fields", "param"), UNSUPPORTED_WITH_STRATEGY)
async def test_a_field_a_strategy_cannot_honour_is_a_400_naming_it(
    client: httpx.AsyncClient, stub: StubEngine, path: str, fields: dict[str, Any], param: str,
    stream: bool,
) -> None:
    response = await client.post(path, json=body_for(path, strategy="bon8", stream=stream,
                                                     **fields))

    assert response.status_code == 400, response.text
    error = error_of(response)
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error", param, "unsupported_with_strategy")
    assert stub.opened == []


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("strategy", "status"), [
    pytest.param("bon8", 400, id="multi-sample"),
    pytest.param({"name": "best_of_n", "n": 1}, 200, id="single-sample"),
])
async def test_greedy_temperature_is_refused_only_for_a_multi_sample_strategy(
    client: httpx.AsyncClient, stub: StubEngine, strategy: Any, status: int, stream: bool
) -> None:
    response = await client.post(CHAT, json=body_for(CHAT, strategy=strategy, temperature=0,
                                                     stream=stream))

    assert response.status_code == status, response.text
    if status == 400:
        error = error_of(response)
        assert (error["type"], error["param"], error["code"]) == (
            "invalid_request_error", "temperature", "greedy_strategy")
        assert stub.sampler.calls == []  # nothing was sampled


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("refusal", "status", "error_type", "param"), [
    pytest.param(VLLMValidationError("prompt too long", parameter="max_tokens", value=9999),
                 400, "invalid_request_error", "max_tokens", id="vllm-validation"),
    pytest.param(ValueError("the chat template failed"), 400, "invalid_request_error", None,
                 id="value-error"),
    pytest.param(QueueOverflowError(), 503, "service_unavailable_error", None,
                 id="queue-full"),
])
async def test_a_refusal_to_open_the_sampler_is_a_json_error_even_for_a_stream(
    client: httpx.AsyncClient, stub: StubEngine, refusal: Exception, status: int,
    error_type: str, param: str | None, stream: bool,
) -> None:
    stub.open_error = refusal

    response = await client.post(CHAT, json=body_for(CHAT, strategy="bon8", stream=stream))

    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = error_of(response)
    assert (error["type"], error["param"]) == (error_type, param)
