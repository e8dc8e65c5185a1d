"""/openapi.json describes the real generation bodies: vLLM's request models plus `strategy`
(every strategy's options by name, or a preset), the responses and the OpenAI error shape."""

from __future__ import annotations

from typing import Any

import httpx
import jsonschema
import pytest

from strategies import PRESETS, REGISTRY
from tests.api.asgi_client import CHAT, COMPLETIONS, body_for, error_of

pytestmark = pytest.mark.anyio


async def _document(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def _validator(document: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    """A validator of `components.schemas[name]`, resolving refs within the document."""
    schema = {"$ref": f"#/components/schemas/{name}", **{k: v for k, v in document.items()
                                                         if k == "components"}}
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize(("path", "model"), [(CHAT, "RefineryChatCompletionRequest"),
                                             (COMPLETIONS, "RefineryCompletionRequest")])
async def test_generation_bodies_are_vllms_request_models_with_strategy(
    client: httpx.AsyncClient, path: str, model: str
) -> None:
    document = await _document(client)
    operation = document["paths"][path]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": f"#/components/schemas/{model}"}
    properties = document["components"]["schemas"][model]["properties"]
    assert {"model", "max_tokens", "temperature", "stream", "strategy"} <= set(properties)
    assert set(operation["responses"]["200"]["content"]) == {"application/json",
                                                             "text/event-stream"}
    validator = _validator(document, model)
    assert validator.is_valid(body_for(path, strategy={"name": "best_of_n", "n": 4}))
    assert validator.is_valid(body_for(path, strategy="esc"))
    assert not validator.is_valid(body_for(path, strategy={"name": "best_of_n", "n": 65}))
    assert not validator.is_valid(body_for(path, strategy={"name": "best_of_n", "nope": 1}))
    assert not validator.is_valid(body_for(path, strategy="no-such-preset"))


async def test_every_strategy_option_and_preset_is_in_the_schema(
    client: httpx.AsyncClient
) -> None:
    document = await _document(client)
    strategy = document["components"]["schemas"]["RefineryChatCompletionRequest"][
        "properties"]["strategy"]
    presets, by_name = strategy["anyOf"][0], strategy["anyOf"][1]
    assert presets["enum"] == list(PRESETS)
    assert set(by_name["discriminator"]["mapping"]) == set(REGISTRY)
    for name, registered in REGISTRY.items():
        ref = by_name["discriminator"]["mapping"][name].rsplit("/", 1)[-1]
        options = document["components"]["schemas"][ref]
        assert options["properties"]["name"]["const"] == name
        assert set(options["properties"]) == {"name", *registered.options.model_fields}
        assert options["additionalProperties"] is False


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
async def test_answers_match_the_documented_response_schemas(
    client: httpx.AsyncClient, path: str
) -> None:
    document = await _document(client)
    kind = "RefineryChatCompletionResponse" if path == CHAT else "RefineryCompletionResponse"
    plain = await client.post(path, json=body_for(path))
    assert plain.status_code == 200
    _validator(document, kind).validate(plain.json())
    refused = await client.post(path, json=body_for(path, strategy="no-such-preset"))
    assert refused.status_code == 400
    error_of(refused)
    _validator(document, "ErrorBody").validate(refused.json())
