"""Request bodies that break JSON parsers rather than validators: the answer is an
OpenAI-shaped 400, never a 500."""

from __future__ import annotations

import httpx
import pytest

from tests.api.asgi_client import CHAT, COMPLETIONS, error_of

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
async def test_a_deeply_nested_body_is_a_400(client: httpx.AsyncClient, path: str) -> None:
    depth = 100_000
    body = b'{"model": "smollm2", "x": ' + b"[" * depth + b"]" * depth + b"}"
    response = await client.post(path, content=body,
                                 headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert error_of(response)["type"] == "invalid_request_error"


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
async def test_a_lone_surrogate_escape_is_a_400(client: httpx.AsyncClient, path: str) -> None:
    """Valid JSON that is not Unicode: refused before it reaches the engine's encoder."""
    body = b'{"model": "smollm2", "prompt": "hi", "stop": ["\\udc00"], "messages": []}'
    response = await client.post(path, content=body,
                                 headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert error_of(response)["code"] == "invalid_json"
    assert "surrogate" in error_of(response)["message"]


async def test_a_surrogate_pair_is_an_ordinary_character(client: httpx.AsyncClient) -> None:
    body = (b'{"model": "smollm2", "max_tokens": 2, "prompt": "smile \\ud83d\\ude00", '
            b'"stop": ["\\uD83D\\uDE00"]}')
    response = await client.post(COMPLETIONS, content=body,
                                 headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
