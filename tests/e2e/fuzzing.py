"""Schemathesis cases for the live server, bounded so that fuzzing stays cheap, and the checks
every answer must pass. Shared by the CI fuzz test (tests/e2e/test_fuzz.py) and the soak
(benchmarks/fuzz_soak.py), so both fuzz the same way.

Bounding: a generated body keeps its shape and every field the schema allows, but a token
budget above `MAX_TOKENS` (or `n` above `MAX_N`) is cut down, so that a valid case costs the
engine a few tokens, not the 2^31 a generator may ask for. Positive cases name the served
model (a random model name would stop nearly every case at the 404); negative cases keep
whatever the generator made.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import schemathesis
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

__all__ = [
    "CHECKS",
    "GENERATION_PATHS",
    "MAX_N",
    "MAX_TOKENS",
    "bound_body",
    "bounded_cases",
    "load_schema",
    "openai_errors",
]

GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")
MAX_TOKENS = 4
MAX_N = 2
# Fields whose integer value is a number of tokens to generate, in the body and in `strategy`.
_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "min_tokens")
# A strategy's critic needs a few words to give a verdict: its option's minimum is 16.
_CRITIC_TOKENS = 16
_COUNT_FIELDS = ("n", "best_of")


def _without_binary_format(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: _without_binary_format(value) for key, value in node.items()
                if not (key == "format" and value == "binary")}
    if isinstance(node, list):
        return [_without_binary_format(item) for item in node]
    return node


def load_schema(base_url: str) -> Any:
    """The server's own /openapi.json, less one keyword: schemathesis 4.32.5 can fail while
    drawing a negative case for a `format: binary` string (`ValueError: Unsupported type:
    'Binary'`; pydantic writes it for vLLM's `prompt_embeds: bytes`), so that field is fuzzed
    as the plain string a JSON body carries."""
    document = httpx.get(f"{base_url}/openapi.json", timeout=30).raise_for_status().json()
    return schemathesis.openapi.from_dict(_without_binary_format(document))


def _capped(mapping: dict[str, Any], fields: tuple[str, ...], cap: int) -> None:
    for name in fields:
        value = mapping.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > cap:
            mapping[name] = cap


def bound_body(body: Any, mode: GenerationMode, served_model: str) -> Any:
    """`body` with its token budgets and counts cut down (in place and returned)."""
    if not isinstance(body, dict):
        return body
    _capped(body, _TOKEN_FIELDS, MAX_TOKENS)
    _capped(body, _COUNT_FIELDS, MAX_N)
    strategy = body.get("strategy")
    if isinstance(strategy, dict):
        _capped(strategy, ("critic_max_tokens",), _CRITIC_TOKENS)
    # An absent max_tokens means "the rest of the context": 8k tokens on the tiny model. Also
    # in negative mode: a "negative" case (e.g. only unknown extra keys) may still be valid.
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = MAX_TOKENS
    if mode is GenerationMode.POSITIVE:
        body["model"] = served_model
        # vLLM's schema lets `prompt` be null and `messages` empty (it checks later, with a
        # 400): a prompt lets the rest of a positive case reach the engine.
        if "messages" in body:
            if not body["messages"]:
                body["messages"] = [{"role": "user", "content": "2+2?"}]
        elif not body.get("prompt") and not body.get("prompt_embeds"):
            body["prompt"] = "2+2="
    return body


def bounded_cases(operation: Any, mode: GenerationMode, served_model: str
                  ) -> st.SearchStrategy[Case]:
    """Schemathesis' cases for `operation` in `mode`, bounded."""

    def bound(case: Case) -> Case:
        if case.body is not None:
            case.body = bound_body(case.body, mode, served_model)
        return case

    return operation.as_strategy(generation_mode=mode).map(bound)


def _sse_errors(text: str) -> list[Any]:
    """The `error` events of an SSE body; raises AssertionError on an event that is not JSON."""
    errors = []
    for event in text.split("\n\n"):
        event = event.strip()
        if not event.startswith("data:"):
            continue
        data = event.removeprefix("data:").strip()
        if data == "[DONE]":
            continue
        try:
            parsed = json.loads(data)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"SSE event is not JSON: {data[:200]!r}") from exc
        if isinstance(parsed, dict) and "error" in parsed:
            errors.append(parsed)
    return errors


def _assert_openai_error(body: Any, status: int | None) -> None:
    assert isinstance(body, dict) and list(body) == ["error"], f"not an OpenAI error: {body!r}"
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    if status is not None:
        assert status >= 400, status


def openai_errors(ctx: Any, response: schemathesis.Response, case: Case) -> None:
    """Every error is OpenAI-shaped: a non-2xx JSON body, and every `error` event of a stream
    (whose 200 was already sent when the failure came)."""
    content_type = response.headers.get("content-type", [""])[0]
    if response.status_code >= 400:
        try:
            body = json.loads(response.content)
        except json.JSONDecodeError as exc:
            raise AssertionError(
                f"{response.status_code} body is not JSON: {response.content[:200]!r}") from exc
        _assert_openai_error(body, response.status_code)
    elif content_type.startswith("text/event-stream"):
        for event in _sse_errors(response.content.decode("utf-8", errors="replace")):
            _assert_openai_error(event, None)


CHECKS: list[Callable[..., Any]] = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    openai_errors,
]
