"""Refinement strategies end to end: `self_refine` and `adaptive_refine` on the real engine
through the official `openai` client (JSON critic under guided decoding, progress comments while
streaming, presets and aliases, disconnects, the shared prefix of a refinement step)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.e2e.disconnects import assert_a_disconnect_aborts_every_sub_request
from tests.e2e.prometheus import kv_block_size, metric_value
from tests.servers import ServerProcess

pytestmark = pytest.mark.e2e

QUESTION = [{"role": "user", "content": "What is 2 + 3? Give only the final answer."}]
SAMPLING = {"temperature": 0.8, "max_tokens": 24, "seed": 99}
# Short critiques keep the suite fast on CPU.
REFINE = {"name": "self_refine", "critic_max_tokens": 48, "return_candidates": True}


def strategy_of(reply: object) -> dict:
    return reply.model_extra["strategy"]  # type: ignore[attr-defined]


def test_self_refine_reports_every_iterate_and_counts_every_token(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm2", messages=QUESTION, **SAMPLING,
        extra_body={"strategy": {**REFINE, "stop": "fixed", "max_iterations": 2}})
    info = strategy_of(reply)
    assert info["name"] == "self_refine" and info["mode"] == "critique"
    assert info["stopped_by"] == "max_iterations"
    steps = info["iterations"]
    assert [s["step"] for s in steps] == [0, 1, 2]
    assert all(s["verdict"] in ("keep", "revise", None) for s in steps[:2])
    assert all(isinstance(s["draft"], str) and isinstance(s["certainty"], float) for s in steps)
    chosen = steps[info["chosen_step"]]
    assert chosen["draft"] == reply.choices[0].message.content
    assert chosen["certainty"] == max(s["certainty"] for s in steps)  # the best, not the last
    # 3 drafts and 2 critiques, every token counted.
    assert info["usage"]["sub_requests"] == 5
    assert reply.usage.completion_tokens > sum(s["tokens"] for s in steps)
    assert info["usage"]["completion_tokens"] == reply.usage.completion_tokens


def test_temperature_zero_is_allowed_for_one_draft_per_step(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm2", messages=QUESTION, temperature=0, max_tokens=16,
        extra_body={"strategy": {**REFINE, "mode": "ioe", "max_iterations": 1}})
    assert strategy_of(reply)["mode"] == "ioe"
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(
            model="smollm2", messages=QUESTION, temperature=0, max_tokens=16,
            extra_body={"strategy": {**REFINE, "samples_per_step": 2}})
    assert error.value.body["param"] == "temperature"


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"strategy": {"name": "self_refine", "max_iterations": 9}}, "strategy.max_iterations"),
     ({"strategy": {"name": "self_refine", "mode": "debate"}}, "strategy.mode"),
     ({"strategy": {"name": "adaptive_refine", "easy_agreement": 1.5}},
      "strategy.easy_agreement"),
     ({"strategy": {"name": "adaptive_refine", "k": 32, "refine_top": 4, "max_iterations": 8,
                    "samples_per_step": 8}}, "strategy.k")],
)
def test_bad_refinement_options_are_400_naming_the_option(
    client: OpenAI, extra: dict, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="smollm2", messages=QUESTION, **SAMPLING,
                                       extra_body=extra)
    assert error.value.body["param"] == param


@pytest.mark.parametrize("model", ["smollm2+refine", "smollm2+adaptive"])
def test_refinement_presets_answer_through_their_model_aliases(client: OpenAI, model: str) -> None:
    reply = client.chat.completions.create(model=model, messages=QUESTION, **SAMPLING)
    info = strategy_of(reply)
    assert info["preset"] == model.split("+")[1] and reply.choices[0].message.content
    if info["name"] == "adaptive_refine":
        assert info["route"] in ("easy", "hard")
        assert info["samples"] >= 5


def test_adaptive_refine_routes_and_records_it(server: ServerProcess, client: OpenAI) -> None:
    before = {route: metric_value(server.base_url, "refinery_refine_route_total", route=route)
              for route in ("easy", "hard")}
    reply = client.chat.completions.create(
        model="smollm2", messages=QUESTION, **SAMPLING,
        extra_body={"strategy": {"name": "adaptive_refine", "k": 4, "easy_agreement": 1.0,
                                 "max_iterations": 1, "critic_max_tokens": 48}})
    info = strategy_of(reply)
    route = info["route"]
    after = metric_value(server.base_url, "refinery_refine_route_total", route=route)
    assert after == before[route] + 1
    if route == "hard":
        assert 1 <= len(info["refinements"]) <= 2
        assert metric_value(server.base_url, "refinery_refine_iterations_count",
                            strategy="adaptive_refine") >= 1


def test_completions_endpoint_runs_self_refine(client: OpenAI) -> None:
    reply = client.completions.create(
        model="smollm2", prompt="Q: What is 2 + 3?\nA: The answer is", **SAMPLING,
        extra_body={"strategy": {**REFINE, "mode": "ioe", "max_iterations": 1}})
    assert reply.object == "text_completion" and reply.choices[0].text
    assert len(strategy_of(reply)["iterations"]) in (1, 2)


def test_streaming_shows_progress_per_step_then_the_answer(server: ServerProcess) -> None:
    body = {"model": "smollm2", "messages": QUESTION, **SAMPLING, "stream": True,
            "stream_options": {"include_usage": True},
            "strategy": {**REFINE, "mode": "ioe", "stop": "fixed", "max_iterations": 2}}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body,
                      timeout=120) as response:
        lines = [line for line in response.iter_lines() if line]
    notes = [line for line in lines if line.startswith(": refinery: step")]
    assert [n.split()[2] for n in notes] == ["step", "step"] and "certainty=" in notes[0]
    events = [json.loads(line[6:]) for line in lines
              if line.startswith("data: ") and line != "data: [DONE]"]
    assert lines[-1] == "data: [DONE]"
    final = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]][0]
    assert final["strategy"]["name"] == "self_refine"
    assert len(final["strategy"]["iterations"]) == 3
    assert events[-1]["usage"]["completion_tokens"] > 0


def test_adaptive_refine_streams_its_route_then_the_answer(server: ServerProcess) -> None:
    # easy_agreement 1.0: unless all 4 samples agree the question is hard and gets refined.
    body = {"model": "smollm2", "messages": QUESTION, **SAMPLING, "stream": True,
            "strategy": {"name": "adaptive_refine", "k": 4, "easy_agreement": 1.0,
                         "max_iterations": 1, "critic_max_tokens": 48}}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body,
                      timeout=120) as response:
        lines = [line for line in response.iter_lines() if line]
    events = [json.loads(line[6:]) for line in lines
              if line.startswith("data: ") and line != "data: [DONE]"]
    final = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]][0]
    info = final["strategy"]
    assert info["name"] == "adaptive_refine" and lines[-1] == "data: [DONE]"
    notes = [line for line in lines if line.startswith(": refinery: route=hard")]
    assert len(notes) == (1 if info["route"] == "hard" else 0)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text


def test_a_refinement_step_reuses_the_kv_blocks_of_the_question(
    server: ServerProcess, client: OpenAI, embedded_model_dir: Path
) -> None:
    """The critic and the rewrite continue the conversation (question, draft): each of them
    reads every full KV block of the question from the prefix cache instead of computing it."""
    from transformers import AutoTokenizer

    story = (f"Story {uuid.uuid4().hex}. " + "The cat sat on the mat. " * 90
             + "How many times did it sit?")
    messages = [{"role": "user", "content": story}]
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    question = len(tokenizer(rendered)["input_ids"])
    hits = "vllm:prefix_cache_hits_total"
    before = metric_value(server.base_url, hits)
    reply = client.chat.completions.create(
        model="smollm2", messages=messages, **SAMPLING,
        extra_body={"strategy": {**REFINE, "stop": "fixed", "max_iterations": 1}})
    reused = metric_value(server.base_url, hits) - before
    block = kv_block_size(server.base_url)
    assert question > 600 and strategy_of(reply)["usage"]["sub_requests"] == 3
    # The question is new (a fresh nonce), so the first draft reads nothing from the cache;
    # the critic and the rewrite each read at least the question's full blocks.
    assert reused >= 2 * (question // block) * block, (reused, question)


LONG_REFINE = {"model": "smollm2", "messages": [{"role": "user", "content": "Count to 1000."}],
               "temperature": 0.8, "max_tokens": 3000, "ignore_eos": True,
               "strategy": {"name": "self_refine", "samples_per_step": 4}}


def test_a_disconnect_mid_refinement_aborts_every_sub_request(server: ServerProcess) -> None:
    assert_a_disconnect_aborts_every_sub_request(server.base_url, LONG_REFINE, 4)