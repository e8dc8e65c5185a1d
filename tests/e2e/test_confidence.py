"""Confidence-guided strategies end to end: DeepConf terminating low-confidence traces inside
the engine, and DSC sharing a group's statistics across requests, through the `openai` client."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from openai import OpenAI

from tests.e2e.disconnects import assert_a_disconnect_aborts_every_sub_request
from tests.e2e.prometheus import metric_value
from tests.servers import ServerProcess

pytestmark = pytest.mark.e2e

QUESTION = [{"role": "user", "content": "What is 2 + 3? Give only the final answer."}]
SAMPLING = {"temperature": 0.8, "max_tokens": 24, "seed": 21}
# DeepConf-low (η = 10): the threshold is the 90th percentile of the warm-up traces' lowest
# group confidence, so most later traces fall below it and are terminated (a trace is judged
# once it has a full window of tokens: ignore_eos makes every trace long enough).
DEEPCONF = {"name": "deepconf", "max_samples": 12, "warmup": 4, "window": 4, "eta": 10,
            "group_window": 16, "consensus": 1.0, "return_candidates": True}
LONG_TRACES = {"temperature": 0.8, "max_tokens": 40, "seed": 21, "extra_body": {
    "ignore_eos": True, "strategy": DEEPCONF}}


def strategy_of(reply: object) -> dict:
    return reply.model_extra["strategy"]  # type: ignore[attr-defined]


def test_deepconf_terminates_low_confidence_traces_and_votes_without_them(
    server: ServerProcess, client: OpenAI
) -> None:
    before = metric_value(server.base_url, "refinery_samples_terminated_total",
                          strategy="deepconf")
    reply = client.chat.completions.create(model="smollm2", messages=QUESTION, **LONG_TRACES)
    info = strategy_of(reply)
    assert info["name"] == "deepconf" and info["certainty_method"] == "exact"
    assert isinstance(info["threshold"], float)
    candidates = info["candidates"]
    terminated = [c for c in candidates if c["terminated"]]
    assert terminated and info["terminated"] == len(terminated)
    assert all(c["finish_reason"] == "terminated" for c in terminated)
    assert all(c["index"] >= 4 for c in terminated)  # warm-up traces run in full
    chosen = [c for c in candidates if c["chosen"]]
    assert len(chosen) == 1 and not chosen[0]["terminated"]
    # Every token of every trace, terminated ones included, is in usage.
    assert info["usage"]["completion_tokens"] == reply.usage.completion_tokens
    assert reply.usage.completion_tokens >= sum(c["tokens"] for c in candidates)
    after = metric_value(server.base_url, "refinery_samples_terminated_total",
                         strategy="deepconf")
    assert after == before + len(terminated)


def test_deepconf_with_topk_confidence_reports_the_estimate(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm2", messages=QUESTION, **SAMPLING,
        extra_body={"strategy": {**DEEPCONF, "confidence": "topk", "eta": 90}})
    assert strategy_of(reply)["certainty_method"] == "topk"


def test_deepconf_streams_progress_then_the_answer(server: ServerProcess) -> None:
    body = {"model": "smollm2", "messages": QUESTION, **SAMPLING, "stream": True,
            "strategy": DEEPCONF}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body,
                      timeout=120) as response:
        lines = [line for line in response.iter_lines() if line]
    assert any(line.startswith(": refinery:") and "threshold" in line for line in lines)
    events = [json.loads(line[6:]) for line in lines
              if line.startswith("data: ") and line != "data: [DONE]"]
    final = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]][0]
    assert final["strategy"]["name"] == "deepconf" and lines[-1] == "data: [DONE]"


def test_dsc_streams_its_allocation_then_the_answer(server: ServerProcess) -> None:
    body = {"model": "smollm2", "messages": QUESTION, **SAMPLING, "stream": True,
            "stream_options": {"include_usage": True},
            "strategy": {"name": "dsc", "max_samples": 8, "group": "streaming-test-2b1d"}}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body,
                      timeout=120) as response:
        lines = [line for line in response.iter_lines() if line]
    assert any(line.startswith(": refinery: first window") for line in lines)
    events = [json.loads(line[6:]) for line in lines
              if line.startswith("data: ") and line != "data: [DONE]"]
    final = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]][0]
    info = final["strategy"]
    assert info["name"] == "dsc" and info["group"] == "streaming-test-2b1d"
    assert 4 <= info["stop_size"] <= 8 and events[-1]["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize("model", ["smollm2+deepconf", "smollm2+dsc"])
def test_confidence_presets_answer_through_their_aliases(client: OpenAI, model: str) -> None:
    reply = client.chat.completions.create(model=model, messages=QUESTION, **SAMPLING)
    info = strategy_of(reply)
    assert info["preset"] == model.split("+")[1] and reply.choices[0].message.content


def test_concurrent_dsc_requests_of_one_group_share_its_history(client: OpenAI) -> None:
    system = {"role": "system", "content": "You add numbers. Test group 7f3a."}
    messages = [system, *QUESTION]
    spec = {"name": "dsc", "max_samples": 16, "step": 4, "answer_format": "number"}

    def ask(seed: int) -> dict:
        reply = client.chat.completions.create(
            model="smollm2", messages=messages, temperature=0.8, max_tokens=16, seed=seed,
            extra_body={"strategy": spec})
        return strategy_of(reply)

    with ThreadPoolExecutor(4) as pool:
        burst = list(pool.map(ask, range(4)))
    assert all(info["group"] == "family" for info in burst)
    assert all(4 <= info["stop_size"] <= 16 for info in burst)
    later = ask(100)
    # The four earlier requests of the group are its history now.
    assert later["history_size"] == 4
    sizes = [info["recorded_size"] for info in burst]
    mean = sum(sizes) / len(sizes)
    assert later["preallocation"] == min(16, max(4, 4 * math.ceil(mean / 4)))
    other = client.chat.completions.create(
        model="smollm2", messages=QUESTION, temperature=0.8, max_tokens=16, seed=5,
        extra_body={"strategy": {**spec, "group": "a-group-of-its-own-51c2"}})
    assert strategy_of(other)["history_size"] == 0  # another group's history is not shared


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"strategy": {"name": "deepconf", "warmup": 20, "max_samples": 8}}, "strategy.warmup"),
     ({"strategy": {"name": "deepconf", "eta": 100}}, "strategy.eta"),
     ({"strategy": {"name": "deepconf", "confidence": "vibes"}}, "strategy.confidence"),
     ({"strategy": {"name": "dsc", "step": 0}}, "strategy.step"),
     ({"strategy": {"name": "dsc", "max_samples": 65}}, "strategy.max_samples")],
)
def test_bad_confidence_options_are_400_naming_the_option(
    client: OpenAI, extra: dict, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="smollm2", messages=QUESTION, **SAMPLING,
                                       extra_body=extra)
    assert error.value.body["param"] == param


LONG_DEEPCONF = {"model": "smollm2", "messages": [{"role": "user", "content": "Count to 1000."}],
                 "temperature": 0.8, "max_tokens": 3000, "ignore_eos": True,
                 "strategy": {"name": "deepconf", "max_samples": 8, "warmup": 6}}


def test_a_disconnect_during_deepconf_aborts_every_trace(server: ServerProcess) -> None:
    assert_a_disconnect_aborts_every_sub_request(server.base_url, LONG_DEEPCONF, 6)