"""Every failure is OpenAI-shaped, with the right status, and the SDK raises the right class."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

from tests.servers import ServerProcess

USER = [{"role": "user", "content": "hi"}]


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if param is not None:
        assert error["param"] == param
    return error


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> httpx.Client:
    with httpx.Client(base_url=server.base_url, timeout=60) as http_client:
        yield http_client


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_malformed_json_is_400(http: httpx.Client, path: str) -> None:
    response = http.post(path, content=b'{"model": "smollm2", "messages": [',
                         headers={"content-type": "application/json"})
    error = assert_openai_error(response, 400)
    assert error["type"] == "invalid_request_error"


def test_body_that_is_not_an_object_is_400(http: httpx.Client) -> None:
    assert_openai_error(http.post("/v1/chat/completions", json=[1, 2]), 400)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "smollm2"}, "messages"),
        ({"model": "smollm2", "messages": "hello"}, "messages"),
        ({"model": "smollm2", "messages": USER, "max_tokens": "many"}, "max_tokens"),
        ({"model": "smollm2", "messages": USER, "temperature": -1}, "temperature"),
        ({"model": "smollm2", "messages": USER, "top_p": 1.5}, "top_p"),
        ({"model": "smollm2", "messages": USER, "max_tokens": -5}, "max_tokens"),
        (
            {"model": "smollm2", "messages": USER, "top_logprobs": 50, "logprobs": True},
            "logprobs",
        ),
    ],
)
def test_schema_violations_and_out_of_range_values_are_400(
    http: httpx.Client, body: dict, param: str
) -> None:
    error = assert_openai_error(http.post("/v1/chat/completions", json=body), 400)
    assert param in (error["param"] or "") or param in error["message"]


def test_completion_out_of_range_is_400(http: httpx.Client) -> None:
    body = {"model": "smollm2", "prompt": "hi", "n": 0}
    assert_openai_error(http.post("/v1/completions", json=body), 400)


def test_unknown_role_is_400(http: httpx.Client) -> None:
    body = {"model": "smollm2", "messages": [{"role": "wizard", "content": "hi"}]}
    error = assert_openai_error(http.post("/v1/chat/completions", json=body), 400,
                                param="messages.0.role")
    assert "wizard" in error["message"]


def test_prompt_longer_than_context_is_400(http: httpx.Client) -> None:
    body = {"model": "smollm2", "prompt": "hello " * 9000, "max_tokens": 1}
    error = assert_openai_error(http.post("/v1/completions", json=body), 400)
    assert "context length" in error["message"]


def test_unknown_model_is_404(http: httpx.Client) -> None:
    body = {"model": "gpt-17", "messages": USER}
    error = assert_openai_error(http.post("/v1/chat/completions", json=body), 404, param="model")
    assert "gpt-17" in error["message"]


def test_sdk_raises_bad_request_and_not_found(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="smollm2", messages=USER, temperature=-2)
    assert bad.value.status_code == 400
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-17", messages=USER)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="smollm2", messages=[{"role": "wizard", "content": "hi"}]  # type: ignore[list-item]
        )


def test_unknown_route_is_openai_shaped_404(http: httpx.Client) -> None:
    assert_openai_error(http.get("/v1/nothing-here"), 404)
