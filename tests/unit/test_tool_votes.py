"""Votes over tool calls and JSON answers: canonical JSON, each tool_vote mode, ignore_args,
text against calls, and best-of-N preferring valid calls, on the scripted sampler."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from strategies.answers import (
    AnswerGroups,
    ExactAnswer,
    canonical_json,
    extract_answer,
    parse_answer_format,
    parse_json_answer,
)
from strategies.base import Result, ToolCall, ToolChoice
from strategies.best_of_n import BestOfNOptions, run_best_of_n
from strategies.self_consistency import SelfConsistencyOptions, run_self_consistency
from strategies.tool_votes import TEXT_ANSWER, sample_answer, sample_is_valid
from tests.unit.fake_sampler import FakeSampler, Scripted


def call(name: str, arguments: Any) -> ToolCall:
    return ToolCall(name, arguments if isinstance(arguments, str) else json.dumps(arguments))


def calls(*made: ToolCall, certainty: float = 1.0, choice: ToolChoice = "required",
          finish_reason: str = "stop") -> Scripted:
    """A sample that made these calls (as the engine's tool parser read them)."""
    text = json.dumps([{"name": c.name, "parameters": json.loads(c.arguments or "null")}
                       for c in made]) if all(_parses(c) for c in made) else "[{broken"
    return Scripted(text, certainty=certainty, tool_choice=choice, tool_calls=made, content=None,
                    finish_reason=finish_reason)


def text(answer: str, certainty: float = 1.0, choice: ToolChoice = "auto") -> Scripted:
    """A sample that answered in text although tools were offered."""
    return Scripted(answer, certainty=certainty, tool_choice=choice, content=answer)


def _parses(tool_call: ToolCall) -> bool:
    try:
        json.loads(tool_call.arguments)
    except (ValueError, RecursionError):
        return False
    return True


def self_consistency(script: list[Scripted], **options: Any) -> Result:
    sampler = FakeSampler(script)
    options = {"max_samples": len(script), "stop": "fixed", **options}
    return asyncio.run(run_self_consistency(sampler, SelfConsistencyOptions(**options)))


def best_of_n(script: list[Scripted], **options: Any) -> Result:
    sampler = FakeSampler(script)
    return asyncio.run(run_best_of_n(sampler, BestOfNOptions(n=len(script), **options)))


PARIS = call("get_weather", {"city": "Paris", "days": 1})
PARIS_REWRITTEN = call("get_weather", '{ "days" : 1.0,\n  "city":"Paris" }')
LONDON = call("get_weather", {"city": "London", "days": 1})
TIME = call("get_time", {"zone": "UTC"})


# --- canonical JSON ---------------------------------------------------------------------

@pytest.mark.parametrize(("a", "b"), [
    pytest.param('{"a": 1, "b": 2}', '{"b": 2, "a": 1}', id="key-order"),
    pytest.param('{"x": 1}', '{"x": 1.0}', id="int-vs-float"),
    pytest.param('{"x": 100}', '{"x": 1e2}', id="exponent"),
    pytest.param('{"x": 2.5}', '{"x": 2.50}', id="trailing-zero"),
    pytest.param('{"a":[1,2]}', '{ "a" : [ 1 ,\n 2 ] }', id="whitespace"),
    pytest.param('{"o": {"z": {"y": 1, "x": [true, null]}}}',
                 '{"o": {"z": {"x": [true, null], "y": 1.0}}}', id="nested"),
])
def test_canonical_json_is_equal_for_equal_values(a: str, b: str) -> None:
    assert canonical_json(parse_json_answer(a)) == canonical_json(parse_json_answer(b))


@pytest.mark.parametrize(("a", "b"), [
    pytest.param('{"x": true}', '{"x": 1}', id="bool-is-not-number"),
    pytest.param('{"x": "1"}', '{"x": 1}', id="string-is-not-number"),
    pytest.param('{"x": "New York"}', '{"x": "NewYork"}', id="spaces-inside-strings"),
    pytest.param('{"x": "Paris"}', '{"x": "paris"}', id="case-inside-strings"),
    pytest.param("[1, 2]", "[2, 1]", id="array-order"),
    pytest.param('{"x": 0.1}', '{"x": 0.10000000000000001}', id="exact-decimals"),
])
def test_canonical_json_tells_different_values_apart(a: str, b: str) -> None:
    assert canonical_json(parse_json_answer(a)) != canonical_json(parse_json_answer(b))


def test_canonical_json_has_no_whitespace_and_sorted_keys() -> None:
    assert canonical_json(parse_json_answer('{"b": [1.0, {"d": 2, "c": "x y"}], "a": null}')) \
        == '{"a":null,"b":[1,{"c":"x y","d":2}]}'


def test_a_huge_exponent_stays_scientific() -> None:
    assert canonical_json(parse_json_answer('{"x": 1e999999}')) == '{"x":1E+999999}'


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20)


@given(json_values)
def test_canonical_json_ignores_how_a_value_is_written(value: Any) -> None:
    pretty = json.dumps(value, indent=3)
    compact = json.dumps(value, separators=(",", ":"), sort_keys=True)
    assert canonical_json(parse_json_answer(pretty)) == canonical_json(parse_json_answer(compact))
    assert canonical_json(json.loads(canonical_json(value))) == canonical_json(value)


# --- JSON answers ----------------------------------------------------------------------

def test_a_json_pointer_votes_on_one_field() -> None:
    spec = parse_answer_format("json:/result/answer")
    assert extract_answer('{"result": {"answer": 4.0, "why": "2+2"}}', spec) == "4"
    assert extract_answer('{"result": {"why": "2+2"}}', spec) is None
    assert extract_answer("four", spec) is None
    assert extract_answer('```json\n{"result": {"answer": [1]}}\n```', spec) == "[1]"
    assert extract_answer('[10, 20]', parse_answer_format("json:/1")) == "20"
    assert extract_answer('{"a/b": 3}', parse_answer_format("json:/a~1b")) == "3"


@pytest.mark.parametrize("bad", ["json:answer", "jsonx"])
def test_a_malformed_json_answer_format_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_answer_format(bad)


def test_json_answers_group_only_with_the_identical_canonical_form() -> None:
    book = AnswerGroups()
    spec = parse_answer_format("json")
    groups = [book.add(extract_answer(t, spec)) for t in
              ['{"city": "Paris"}', '{ "city":"Paris" }', '{"city": "paris"}', '"Paris"']]
    assert groups == [0, 0, 1, 2]
    # a plain text answer never joins an exact one, even when it reads the same
    assert book.add('{"city":"Paris"}') == 3
    assert book.add(ExactAnswer('{"city":"Paris"}')) == 0


def test_self_consistency_votes_json_answers_as_parsed_json() -> None:
    script = [Scripted('{"answer": 4, "why": "a"}', certainty=1.0),
              Scripted('{"why": "b", "answer": 4.0}', certainty=2.0),
              Scripted('{"answer": 5, "why": "c"}', certainty=3.0)]
    result = self_consistency(script, answer_format="json:/answer")
    assert result.answer == "4"
    assert result.votes == {"4": 2, "5": 1}
    assert result.chosen.index == 1  # the most certain sample of the winning answer


# --- tool votes --------------------------------------------------------------------------

def test_name_args_votes_over_canonical_calls() -> None:
    result = self_consistency([calls(PARIS), calls(LONDON, certainty=5.0),
                               calls(PARIS_REWRITTEN, certainty=2.0)])
    assert result.answer == 'get_weather({"city":"Paris","days":1})'
    assert result.votes == {'get_weather({"city":"Paris","days":1})': 2,
                            'get_weather({"city":"London","days":1})': 1}
    assert result.chosen.index == 2
    assert result.details["tool_vote"] == "name_args"


def test_name_votes_over_the_tool_only() -> None:
    result = self_consistency([calls(PARIS), calls(TIME, certainty=9.0), calls(LONDON)],
                              tool_vote="name")
    assert result.answer == "get_weather(…)"
    assert result.votes == {"get_weather(…)": 2, "get_time(…)": 1}


def test_hierarchical_picks_the_tool_first_then_its_arguments() -> None:
    a1, a2, a3 = (call("search", {"q": q}) for q in ("x", "y", "z"))
    b = call("lookup", {"id": 7})
    script = [calls(a1), calls(a1), calls(a2), calls(a3), calls(b), calls(b), calls(b)]
    flat = self_consistency(script)
    assert flat.answer == 'lookup({"id":7})'  # 3 votes against 2 for any one search
    tiered = self_consistency(script, tool_vote="hierarchical")
    assert tiered.answer == 'search({"q":"x"})'  # search 4 – lookup 3, then x 2 – y 1 – z 1
    assert tiered.details["tool_votes"] == {"search(…)": 4, "lookup(…)": 3}
    assert tiered.chosen.tool_calls == (a1,)


def test_ignored_arguments_are_left_out_of_the_comparison() -> None:
    script = [calls(call("send", {"to": "ann", "note": "hi"})),
              calls(call("send", {"to": "ann", "note": "hello there"})),
              calls(call("send", {"to": "bob", "note": "hi"}), certainty=9.0)]
    assert self_consistency(script).votes == {
        'send({"note":"hi","to":"ann"})': 1, 'send({"note":"hello there","to":"ann"})': 1,
        'send({"note":"hi","to":"bob"})': 1}
    result = self_consistency(script, ignore_args=["note"])
    assert result.answer == 'send({"to":"ann"})'
    assert result.votes == {'send({"to":"ann"})': 2, 'send({"to":"bob"})': 1}


def test_parallel_calls_vote_as_one_action_in_any_order() -> None:
    result = self_consistency([calls(PARIS, TIME), calls(TIME, PARIS_REWRITTEN), calls(PARIS)])
    key = 'get_time({"zone":"UTC"}); get_weather({"city":"Paris","days":1})'
    assert result.answer == key
    assert result.votes[key] == 2


def test_a_text_answer_and_a_call_are_different_answers() -> None:
    script = [text("The answer is 4."), text("The answer is 4.", certainty=9.0),
              calls(PARIS, choice="auto"), calls(PARIS, choice="auto"),
              calls(PARIS, choice="auto")]
    result = self_consistency(script)
    assert result.answer == 'get_weather({"city":"Paris","days":1})'
    assert result.votes == {"4": 2, 'get_weather({"city":"Paris","days":1})': 3}
    text_wins = self_consistency(script[:3] + [text("The answer is 4.")])
    assert text_wins.answer == "4"
    assert text_wins.chosen.tool_calls == ()


def test_by_name_every_text_answer_is_one_choice_not_to_call() -> None:
    script = [text("The answer is 4."), text("It is 5."), calls(TIME, choice="auto")]
    result = self_consistency(script, tool_vote="name")
    assert result.votes == {TEXT_ANSWER: 2, "get_time(…)": 1}
    assert result.answer == "(text)"


def test_an_invalid_call_votes_for_nothing() -> None:
    broken = call("get_weather", '{"city": "Par')
    not_an_object = call("get_weather", "[1, 2]")
    script = [calls(broken, certainty=9.0), calls(not_an_object), calls(LONDON)]
    result = self_consistency(script)
    assert result.answers[:2] == (None, None)
    assert result.answer == 'get_weather({"city":"London","days":1})'


def test_validity_depends_on_the_tool_choice() -> None:
    def made(script: Scripted) -> bool:
        return sample_is_valid(script.sample(0))

    assert made(text("no call", choice="auto"))
    assert not made(text("no call", choice="required"))
    assert not made(text("no call", choice="named"))
    assert made(calls(PARIS))
    assert not made(calls(call("f", "{oops")))
    assert made(Scripted("plain"))  # drawn without tools
    assert sample_answer(text("x", choice="required").sample(0),
                         parse_answer_format("auto")) == sample_answer(
        calls(call("f", "{oops")).sample(0), parse_answer_format("auto"))


def test_esc_stops_at_a_window_of_identical_calls_however_written() -> None:
    script = [calls(PARIS), calls(PARIS_REWRITTEN), calls(PARIS), calls(LONDON),
              calls(LONDON), calls(LONDON)]
    sampler = FakeSampler(script)
    options = SelfConsistencyOptions(max_samples=6, stop="esc", window=3, lookahead=0)
    result = asyncio.run(run_self_consistency(sampler, options))
    assert len(result.samples) == 3
    assert result.stopped_early


# --- best-of-N -----------------------------------------------------------------------------

def test_best_of_n_by_certainty_prefers_a_valid_call() -> None:
    script = [calls(call("get_weather", '{"city": '), certainty=9.0, finish_reason="length"),
              text("I cannot call it.", certainty=8.0, choice="required"),
              calls(LONDON, certainty=2.0), calls(PARIS, certainty=3.0)]
    result = best_of_n(script, selection="self_certainty")
    assert result.chosen.index == 3


def test_best_of_n_with_auto_counts_a_text_answer_as_valid() -> None:
    script = [calls(call("f", "{bad"), certainty=9.0, choice="auto"),
              text("Paris is sunny.", certainty=8.0), calls(PARIS, certainty=3.0, choice="auto")]
    assert best_of_n(script, selection="self_certainty").chosen.index == 1


def test_best_of_n_falls_back_to_all_samples_when_none_is_valid() -> None:
    script = [text("no", certainty=1.0, choice="required"),
              text("never", certainty=4.0, choice="required")]
    result = best_of_n(script, selection="self_certainty")
    assert result.chosen.index == 1
    assert result.answer is None


def test_best_of_n_borda_votes_over_calls_and_hierarchically() -> None:
    a1, a2 = call("search", {"q": "x"}), call("search", {"q": "y"})
    b = call("lookup", {"id": 7})
    script = [calls(b, certainty=9.0), calls(b, certainty=8.0), calls(a1, certainty=7.0),
              calls(a2, certainty=6.0), calls(a1, certainty=1.0)]
    flat = best_of_n(script, selection="majority")
    assert flat.answer == 'lookup({"id":7})'
    tiered = best_of_n(script, selection="majority", tool_vote="hierarchical")
    assert tiered.answer == 'search({"q":"x"})'
    assert tiered.details["tool_votes"] == {"lookup(…)": 2, "search(…)": 3}
    borda = best_of_n(script)  # default selection: borda over the call keys
    assert borda.details["selection"] == "borda"
    assert borda.answer == 'lookup({"id":7})'


def test_tool_vote_options_are_bounded() -> None:
    with pytest.raises(ValidationError):
        SelfConsistencyOptions(tool_vote="arguments")
    with pytest.raises(ValidationError):
        BestOfNOptions(ignore_args=[f"a{i}" for i in range(33)])
    with pytest.raises(ValidationError):
        BestOfNOptions(ignore_args=[""])
    assert BestOfNOptions(ignore_args=["note"]).ignore_args == ("note",)


def test_json_nested_too_deep_to_key_is_no_answer_not_a_crash() -> None:
    deep = '{"a":' * 5000 + "1" + "}" * 5000
    assert extract_answer(deep, parse_answer_format("json")) is None
    assert not sample_is_valid(calls(call("f", deep)).sample(0))
