"""Every error the API answers is OpenAI's `{"error": {message, type, param, code}}`, with the
status's type, whichever layer raised it; a 500 still carries the request id and is logged
once with its traceback."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from vllm.entrypoints.serve.engine.protocol import ErrorInfo, ErrorResponse

from server.exceptions import Unavailable
from tests.api.asgi_client import (
    CHAT,
    COMPLETIONS,
    AppFactory,
    body_for,
    client_for,
    error_of,
)
from tests.api.stub_engine import StubEngine

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(("method", "path", "request_args", "status", "param", "code"), [
    pytest.param("POST", CHAT, {"content": b"{not json"}, 400, None, "invalid_json",
                 id="bad-json"),
    pytest.param("POST", CHAT, {"content": b"\xff\xfe"}, 400, None, "invalid_json",
                 id="not-utf8"),
    pytest.param("POST", CHAT, {"json": ["a", "list"]}, 400, None, "invalid_json",
                 id="non-object"),
    pytest.param("POST", CHAT, {"json": body_for(CHAT, max_tokens="many")}, 400, "max_tokens",
                 "invalid_value", id="bad-field"),
    pytest.param("POST", CHAT, {"json": {"model": "smollm2"}}, 400, "messages", "invalid_value",
                 id="missing-field"),
    pytest.param("POST", CHAT, {"json": {"model": "smollm2", "messages": [
        {"role": "wizard", "content": "hi"}]}}, 400, "messages.0.role", "invalid_value",
                 id="unknown-role"),
    pytest.param("POST", COMPLETIONS, {"json": body_for(COMPLETIONS, temperature="hot")}, 400,
                 "temperature", "invalid_value", id="completion-bad-field"),
    pytest.param("GET", "/v1/nope", {}, 404, None, None, id="unknown-route"),
    pytest.param("GET", CHAT, {}, 405, None, None, id="wrong-method"),
])
async def test_a_bad_request_is_an_openai_error_with_the_status_type(
    client: httpx.AsyncClient, stub: StubEngine, method: str, path: str,
    request_args: dict[str, Any], status: int, param: str | None, code: str | None,
) -> None:
    response = await client.request(method, path, **request_args)

    assert response.status_code == status, response.text
    error = error_of(response)
    expected_type = "not_found_error" if status == 404 else "invalid_request_error"
    assert (error["type"], error["param"], error["code"]) == (expected_type, param, code)
    assert error["message"]
    if status == 405:
        assert response.headers["allow"] == "POST"
    assert stub.chat.requests == stub.completion.requests == []


@pytest.mark.parametrize(("authorization", "status"), [
    pytest.param(None, 401, id="no-header"),
    pytest.param("Bearer wrong", 401, id="wrong-key"),
    pytest.param("Bearer k2x", 401, id="a-key-with-a-suffix"),
    pytest.param("Basic k2", 401, id="not-bearer"),
    pytest.param("Bearer k2", 200, id="second-key"),
    pytest.param("bearer  k1 ", 200, id="scheme-case-and-spaces"),
])
@pytest.mark.parametrize(("method", "path"), [
    ("POST", CHAT), ("POST", COMPLETIONS), ("GET", "/v1/models"), ("GET", "/v1/strategies")])
async def test_with_api_keys_only_a_listed_bearer_key_passes(
    make_app: AppFactory, method: str, path: str, authorization: str | None, status: int
) -> None:
    headers = {"authorization": authorization} if authorization else {}
    async with client_for(make_app(api_keys=["k1", "k2"])) as client:
        response = await client.request(method, path, headers=headers,
                                        json=body_for(path) if method == "POST" else None)
        probe = await client.get("/health")

    assert response.status_code == status, response.text
    if status == 401:
        error = error_of(response)
        assert (error["type"], error["param"], error["code"]) == (
            "authentication_error", None, "invalid_api_key")
    assert probe.status_code == 200  # probes need no key


@pytest.mark.parametrize(("vllm_error", "status", "error_type", "code"), [
    pytest.param(ErrorInfo(message="The model `gpt-4` does not exist.", type="NotFoundError",
                           param="model", code=404),
                 404, "not_found_error", "model_not_found", id="unknown-model"),
    pytest.param(ErrorInfo(message="max_tokens is too large", type="BadRequestError",
                           param="max_tokens", code=400),
                 400, "invalid_request_error", None, id="bad-request"),
])
@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
async def test_a_vllm_error_response_is_rerendered_in_openai_vocabulary(
    client: httpx.AsyncClient, stub: StubEngine, path: str, vllm_error: ErrorInfo,
    status: int, error_type: str, code: str | None,
) -> None:
    stub.chat.reply = stub.completion.reply = ErrorResponse(error=vllm_error)

    response = await client.post(path, json=body_for(path))

    assert response.status_code == status, response.text
    assert error_of(response) == {"message": vllm_error.message, "type": error_type,
                                  "param": vllm_error.param, "code": code}


@pytest.mark.parametrize(("state", "code"), [
    pytest.param("loading", "engine_not_ready", id="loading"),
    pytest.param("draining", "server_shutting_down", id="draining"),
    pytest.param("dead", "engine_dead", id="engine-dead"),
])
@pytest.mark.parametrize(("method", "path"), [
    ("POST", CHAT), ("POST", COMPLETIONS), ("GET", "/v1/models")])
async def test_an_engine_that_cannot_take_work_is_a_503(
    make_app: AppFactory, stub: StubEngine, state: str, code: str, method: str, path: str
) -> None:
    app = make_app(ready=state != "loading")
    if state == "draining":
        app.state.lifecycle.begin_drain()
    stub.alive = state != "dead"
    async with client_for(app) as client:
        response = await client.request(method, path,
                                        json=body_for(path) if method == "POST" else None)
        readiness = await client.get("/ready")

    assert response.status_code == 503, response.text
    error = error_of(response)
    assert (error["type"], error["param"], error["code"]) == (
        "service_unavailable_error", None, code)
    assert readiness.status_code == 503
    assert stub.chat.requests == stub.completion.requests == []


@pytest.mark.parametrize("sent_id", [None, "client-chosen-id-42"])
@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
async def test_an_unexpected_exception_is_a_500_with_the_request_id_logged_once(
    client: httpx.AsyncClient, stub: StubEngine, caplog: pytest.LogCaptureFixture,
    path: str, sent_id: str | None,
) -> None:
    bug = RuntimeError("a bug in the serving layer")
    stub.chat.raises = stub.completion.raises = bug
    headers = {"x-request-id": sent_id} if sent_id else {}

    with caplog.at_level(logging.INFO):
        response = await client.post(path, json=body_for(path), headers=headers)

    assert response.status_code == 500
    assert error_of(response) == {"message": "internal server error", "type": "server_error",
                                  "param": None, "code": "internal_error"}
    request_id = response.headers["x-request-id"]
    assert request_id == (sent_id or request_id) and len(request_id) >= 8
    tracebacks = [record for record in caplog.records if record.exc_info]
    assert len(tracebacks) == 1, [record.getMessage() for record in tracebacks]
    assert tracebacks[0].exc_info[1] is bug
    assert request_id in tracebacks[0].getMessage()
    assert "a bug in the serving layer" not in response.text


@pytest.mark.parametrize("status", [200, 400, 404, 503])
async def test_every_response_carries_the_request_id(
    make_app: AppFactory, status: int
) -> None:
    app = make_app(ready=status != 503)
    body = body_for(CHAT, max_tokens="many") if status == 400 else body_for(CHAT)
    async with client_for(app) as client:
        path = "/v1/nope" if status == 404 else CHAT
        generated = await client.post(path, json=body)
        echoed = await client.post(path, json=body, headers={"x-request-id": "abc-123"})

    assert generated.status_code == echoed.status_code == status
    assert len(generated.headers["x-request-id"]) == 32
    assert echoed.headers["x-request-id"] == "abc-123"



@pytest.mark.parametrize(
    ("raised", "status", "error_type"),
    [(NotImplementedError("beam search is not supported here"), 501, "not_implemented_error"),
     (Unavailable("the engine has stopped", code="engine_dead"), 503,
      "service_unavailable_error")],
)
async def test_a_deliberate_5xx_keeps_its_message_and_logs_no_traceback(
    client: httpx.AsyncClient, stub: StubEngine, caplog: pytest.LogCaptureFixture,
    raised: Exception, status: int, error_type: str,
) -> None:
    stub.chat.raises = raised
    with caplog.at_level(logging.INFO):
        response = await client.post(CHAT, json=body_for(CHAT))
    assert response.status_code == status
    error = error_of(response)
    assert error["type"] == error_type and error["message"] == str(raised)
    assert [record for record in caplog.records if record.exc_info] == []
