"""Hostile `strategy` objects, in process: every option of every strategy gets valid values and
junk (wrong types, huge and non-finite numbers, odd unicode, nested lists and objects), and the
answer is a 200 or an OpenAI-shaped 4xx, never a 5xx, never a hang.

The options come from each strategy's own options model (its JSON schema, the one
/v1/strategies and /openapi.json show), so a new option is fuzzed with no change here. The
stub engine's sampler answers any prompt, so a request whose options are valid runs its
strategy to the end.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.api.strategies import describe_options
from strategies import PRESETS, REGISTRY
from tests.api.asgi_client import CHAT, COMPLETIONS, AppFactory, body_for, client_for
from tests.api.stub_engine import StubEngine
from tests.unit.fake_sampler import FakeSampler, Scripted

# One request must never take this long on the stub engine: past it, the test calls it a hang.
HANG_GUARD_S = 10.0
# Enough samples for the largest budget a valid option set allows (64 samples, or 8 refinement
# iterations of a few samples each).
_SCRIPT = tuple(Scripted("The answer is 4.", token_certainty=(1.0, 2.0, 3.0, 4.0))
                for _ in range(600))

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["", "0", "-1", "1e999", "NaN", "null", "\u202e\u0000", "🙂" * 50,
                     "regex:(", "regex:(a+)+$", "x" * 5000, "borda", "esc", "name", "\udc00",
                     "\ud83d"]),
)
JUNK = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)


def _valid(prop: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values a field's JSON schema (as /v1/strategies describes it) accepts."""
    choices: list[st.SearchStrategy[Any]] = []
    types = prop.get("type", "string")
    for kind in types if isinstance(types, list) else [types]:
        if "enum" in prop and kind == "string":
            choices.append(st.sampled_from([v for v in prop["enum"] if v is not None]))
        elif kind == "integer":
            choices.append(st.integers(prop.get("minimum", -(2**31)),
                                       prop.get("maximum", 2**31)))
        elif kind == "number":
            low = prop.get("minimum", prop.get("exclusiveMinimum", -1e9))
            high = prop.get("maximum", prop.get("exclusiveMaximum", 1e9))
            choices.append(st.floats(low, high, allow_nan=False,
                                     exclude_min="exclusiveMinimum" in prop,
                                     exclude_max="exclusiveMaximum" in prop))
        elif kind == "boolean":
            choices.append(st.booleans())
        elif kind == "null":
            choices.append(st.none())
        else:
            choices.append(st.text(min_size=prop.get("minLength", 0),
                                   max_size=min(prop.get("maxLength", 40), 40)))
    return st.one_of(choices)


@st.composite
def strategy_objects(draw: st.DrawFn) -> Any:
    """A strategy object: valid options, valid ones with exactly one junk option (so that
    each option meets junk alone), a mix, an unknown option, or junk in the place of the name
    or of the whole object."""
    shape = draw(st.sampled_from(["valid", "one junk", "one junk", "mixed", "unknown option",
                                  "bad name", "junk", "preset"]))
    if shape == "junk":
        return draw(JUNK)
    if shape == "preset":
        return draw(st.sampled_from(sorted(PRESETS)) | st.text(max_size=12))
    name = draw(st.sampled_from(sorted(REGISTRY)))
    options = describe_options(REGISTRY[name])
    obj: dict[str, Any] = {"name": draw(JUNK) if shape == "bad name" else name}
    for option, prop in options.items():
        if draw(st.booleans()):
            obj[option] = draw(_valid(prop))
    if shape == "one junk":
        obj[draw(st.sampled_from(sorted(options)))] = draw(JUNK)
    elif shape == "mixed":
        for option in draw(st.lists(st.sampled_from(sorted(options)), max_size=4)):
            obj[option] = draw(JUNK)
    elif shape == "unknown option":
        obj[draw(st.text(max_size=12).filter(lambda key: key not in options))] = draw(JUNK)
    return obj


class AnswersAnything(StubEngine):
    """The stub engine, whose samplers answer every prompt (the request's own and any
    continuation a refinement adds) with the same certain sample."""

    async def open_sampler(self, request: Any, request_id: str, slots: int,
                           certainty_source: str | None = None) -> Any:
        opened = await super().open_sampler(request, request_id, slots, certainty_source)
        sampler = FakeSampler(_SCRIPT, continuations={lambda _: True: _SCRIPT})
        self.opened.clear()  # one engine serves every example: keep no history
        return type(opened)(sampler=sampler, usage=opened.usage, kind=opened.kind,
                            model=opened.model, temperature=opened.temperature)


@pytest.fixture
def stub() -> StubEngine:
    """`make_app`'s engine (tests/api/conftest.py), here one that answers anything."""
    return AnswersAnything()


def _assert_answer(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code == 200:
        return
    assert 400 <= response.status_code < 500, response.status_code
    body = response.json()
    assert list(body) == ["error"], body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert error["type"] == "invalid_request_error", error


def _encode(body: dict[str, Any]) -> bytes:
    # Python's json writes NaN/Infinity (as JavaScript does, and as clients send them); a lone
    # surrogate in junk text stays an escape, as a JSON client would write it.
    return json.dumps(body, allow_nan=True).encode()


async def _post(make_app: AppFactory, path: str, body: dict[str, Any]) -> httpx.Response:
    async with client_for(make_app()) as client:
        return await asyncio.wait_for(
            client.post(path, content=_encode(body),
                        headers={"content-type": "application/json"}),
            HANG_GUARD_S)


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(strategy=strategy_objects(), path=st.sampled_from([CHAT, COMPLETIONS]),
       stream=st.booleans())
def test_hostile_strategy_objects_get_a_200_or_an_openai_shaped_400(
    make_app: AppFactory, strategy: Any, path: str, stream: bool
) -> None:
    body = body_for(path, strategy=strategy, temperature=0.7, max_tokens=8, stream=stream)
    response = asyncio.run(_post(make_app, path, body))
    _assert_answer(response)
    if response.status_code == 200 and not stream and strategy is not None:
        assert "strategy" in response.json()  # `strategy: null` is a plain request


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.sampled_from([2**63, -(2**63) - 1, 10**400, math.inf, -math.inf, math.nan,
                              1e308, 5e-324, -0.0]),
       name=st.sampled_from(sorted(REGISTRY)), data=st.data())
def test_extreme_numbers_in_any_option_are_refused_or_served(
    make_app: AppFactory, value: float, name: str, data: st.DataObject
) -> None:
    option = data.draw(st.sampled_from(sorted(describe_options(REGISTRY[name]))))
    body = body_for(CHAT, strategy={"name": name, option: value}, temperature=0.7, max_tokens=8)
    _assert_answer(asyncio.run(_post(make_app, CHAT, body)))
