"""Strategies end to end: the real engine, the official `openai` client, batched sub-requests."""

from __future__ import annotations

import json
import math
import uuid

import httpx
import openai
import pytest
from openai import OpenAI

from tests.e2e.disconnects import (
    assert_a_disconnect_aborts_every_sub_request,
    assert_a_disconnect_storm_leaks_nothing,
)
from tests.e2e.prometheus import kv_block_size, metric_value, wait_for_metric
from tests.servers import ServerProcess

QUESTION = [{"role": "user", "content": "What is 2 + 3? Give only the final answer."}]
SAMPLING = {"temperature": 0.8, "max_tokens": 32, "seed": 1234}


def strategy_of(reply: object) -> dict:
    return reply.model_extra["strategy"]  # type: ignore[attr-defined]


def test_strategies_listing_comes_from_the_option_models(server: ServerProcess) -> None:
    listing = httpx.get(f"{server.base_url}/v1/strategies").json()
    by_name = {s["name"]: s for s in listing["data"]}
    assert set(by_name) == {"self_consistency", "best_of_n", "self_refine", "adaptive_refine",
                            "deepconf", "dsc"}
    sc = by_name["self_consistency"]["options"]
    assert sc["max_samples"]["default"] == 16
    assert (sc["max_samples"]["minimum"], sc["max_samples"]["maximum"]) == (1, 64)
    assert sc["stop"]["enum"] == ["fixed", "esc", "asc"] and sc["stop"]["default"] == "esc"
    assert sc["window"]["default"] == 5 and sc["confidence"]["default"] == 0.95
    assert sc["lookahead"]["default"] == 1
    bon = by_name["best_of_n"]["options"]
    assert bon["n"]["default"] == 8 and bon["borda_p"]["default"] == 0.5
    assert set(bon["selection"]["enum"]) == {"self_certainty", "borda", "logprob", "majority"}
    assert all(option.get("description") for s in listing["data"]
               for option in s["options"].values())
    assert {"sc8", "esc", "asc", "bon8", "borda8", "refine", "adaptive"} <= set(listing["presets"])
    refine = by_name["self_refine"]["options"]
    assert refine["max_iterations"]["default"] == 3
    assert (refine["max_iterations"]["minimum"], refine["max_iterations"]["maximum"]) == (1, 8)
    assert refine["mode"]["enum"] == ["critique", "ioe"] and refine["stop"]["default"] == "both"
    assert by_name["adaptive_refine"]["options"]["easy_agreement"]["default"] == 0.8


def test_models_list_preset_aliases(client: OpenAI) -> None:
    ids = {m.id for m in client.models.list().data}
    assert {"smollm2", "smollm2+esc", "smollm2+bon8", "smollm2+borda8", "smollm2+sc8",
            "smollm2+asc"} <= ids


def test_fixed_self_consistency_accounts_for_every_token(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm2", messages=QUESTION, **SAMPLING,
        extra_body={"strategy": {"name": "self_consistency", "stop": "fixed", "max_samples": 4,
                                 "return_candidates": True}},
    )
    info = strategy_of(reply)
    assert info["name"] == "self_consistency" and info["stop"] == "fixed"
    assert info["samples"] == 4 and info["max_samples"] == 4 and not info["stopped_early"]
    # A vote reads answers only: the samples are drawn without certainty or logprobs.
    assert info["certainty_method"] is None
    candidates = info["candidates"]
    assert len(candidates) == 4
    assert reply.usage.completion_tokens == sum(c["tokens"] for c in candidates)
    assert info["usage"]["sub_requests"] == 4
    plain = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=1)
    assert reply.usage.prompt_tokens == plain.usage.prompt_tokens  # prompt counted once
    chosen = [c for c in candidates if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["text"] == reply.choices[0].message.content
    assert all(c["certainty"] is None and c["mean_logprob"] is None for c in candidates)
    votes = info["votes"]
    assert sum(votes.values()) == sum(1 for c in candidates if c["answer"] is not None)
    if info["answer"] is not None:
        assert votes[info["answer"]] == max(votes.values())
        # The earliest finished sample of the winning answer is the one returned.
        winners = [c for c in candidates if c["answer"] == info["answer"]]
        finished = [c for c in winners if c["finish_reason"] == "stop"] or winners
        assert chosen[0]["index"] == min(c["index"] for c in finished)


def test_self_consistency_can_return_the_most_certain_writing_of_the_answer(
    client: OpenAI
) -> None:
    reply = client.completions.create(
        model="smollm2", prompt="Q: What is 2 + 2?\nA: The answer is", max_tokens=6,
        temperature=1.0, seed=5,
        extra_body={"strategy": {"name": "self_consistency", "stop": "fixed", "max_samples": 6,
                                 "answer_format": "number", "representative": "most_certain",
                                 "return_candidates": True}},
    )
    info = reply.model_extra["strategy"]
    assert info["certainty_method"] == "exact"
    candidates = info["candidates"]
    assert all(isinstance(c["certainty"], float) for c in candidates)
    (chosen,) = [c for c in candidates if c["chosen"]]
    assert chosen["text"] == reply.choices[0].text
    if info["answer"] is not None:
        winners = [c for c in candidates if c["answer"] == info["answer"]]
        finished = [c for c in winners if c["finish_reason"] == "stop"] or winners
        assert chosen["certainty"] == max(c["certainty"] for c in finished)


@pytest.mark.parametrize("preset", ["sc8", "esc", "asc", "bon8", "borda8"])
def test_every_preset_answers(client: OpenAI, preset: str) -> None:
    reply = client.chat.completions.create(
        model="smollm2", messages=QUESTION, **SAMPLING, extra_body={"strategy": preset}
    )
    info = strategy_of(reply)
    assert info["preset"] == preset
    assert 1 <= info["samples"] <= info["max_samples"]
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens >= info["samples"]


def test_model_alias_selects_a_preset(client: OpenAI) -> None:
    reply = client.chat.completions.create(model="smollm2+bon8", messages=QUESTION, **SAMPLING)
    assert reply.model == "smollm2"
    info = strategy_of(reply)
    assert info["name"] == "best_of_n" and info["samples"] == 8
    assert info["selection"] == "self_certainty"


def test_best_of_n_picks_the_sample_of_highest_exact_certainty(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Name a fruit."}], **SAMPLING,
        extra_body={"strategy": {"name": "best_of_n", "n": 4, "selection": "self_certainty",
                                 "return_candidates": True}},
    )
    info = strategy_of(reply)
    assert info["certainty_method"] == "exact"
    candidates = info["candidates"]
    assert len(candidates) == 4
    for candidate in candidates:
        # KL(U‖p) ≥ 0 (unbounded above); entropy lies in [0, log V] nats (V = 49152).
        assert candidate["certainty"] > 0
        assert 0 <= candidate["entropy"] <= math.log(49152)
        assert candidate["lowest_group_certainty"] <= candidate["certainty"] + 1e-9
    best = max(candidates, key=lambda c: c["certainty"])
    assert best["chosen"] and best["text"] == reply.choices[0].message.content


def test_completions_endpoint_runs_strategies(client: OpenAI) -> None:
    reply = client.completions.create(
        model="smollm2", prompt="Q: What is 2 + 3?\nA: The answer is", **SAMPLING,
        extra_body={"strategy": {"name": "best_of_n", "n": 3, "selection": "majority"}},
    )
    assert reply.object == "text_completion"
    assert strategy_of(reply)["samples"] == 3
    assert reply.choices[0].text


def test_seeded_strategy_is_reproducible(client: OpenAI) -> None:
    def run() -> tuple[str, int]:
        reply = client.chat.completions.create(
            model="smollm2", messages=QUESTION, **SAMPLING,
            extra_body={"strategy": {"name": "self_consistency", "stop": "asc",
                                     "max_samples": 12, "window": 3}},
        )
        return reply.choices[0].message.content, strategy_of(reply)["samples"]

    assert run() == run()


def test_streaming_sends_keepalives_then_the_answer_then_strategy_and_usage(
    server: ServerProcess,
) -> None:
    body = {"model": "smollm2", "messages": QUESTION, **SAMPLING, "stream": True,
            "stream_options": {"include_usage": True},
            "strategy": {"name": "best_of_n", "n": 4}}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body,
                      timeout=120) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[0].startswith(":"), "a keep-alive comment comes first"
    events = [line[len("data: "):] for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] > 0
    final = chunks[-2]
    assert final["choices"][0]["finish_reason"] in ("stop", "length")
    assert final["strategy"]["samples"] == 4
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1])
    assert text
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) > 1


def test_streaming_with_the_openai_client(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="smollm2+borda8", messages=QUESTION, **SAMPLING, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason][0]
    assert final.model_extra["strategy"]["name"] == "best_of_n"
    assert chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"strategy": {"name": "tree_of_thought"}}, "strategy.name"),
        ({"strategy": {"name": "self_consistency", "samples": 3}}, "strategy.samples"),
        ({"strategy": {"name": "self_consistency", "max_samples": 65}}, "strategy.max_samples"),
        ({"strategy": {"name": "best_of_n", "n": 0}}, "strategy.n"),
        ({"strategy": {"name": "best_of_n", "selection": "vibes"}}, "strategy.selection"),
        ({"strategy": {"name": "self_consistency", "answer_format": "regex:("}},
         "strategy.answer_format"),
        ({"strategy": "no-such-preset"}, "strategy"),
        ({"strategy": 42}, "strategy"),
        ({"strategy": "bon8", "temperature": 0}, "temperature"),
        ({"strategy": "bon8", "n": 2}, "n"),
        ({"strategy": "bon8", "logprobs": True}, "logprobs"),
    ],
)
def test_invalid_strategy_requests_are_400_naming_the_option(
    client: OpenAI, extra: dict, param: str
) -> None:
    sampling = {**SAMPLING, "max_tokens": 4}
    for key in ("temperature", "n", "logprobs"):
        if key in extra:
            sampling[key] = extra.pop(key)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="smollm2", messages=QUESTION, **sampling,
                                       extra_body=extra)
    assert err.value.body["param"] == param
    assert err.value.body["type"] == "invalid_request_error"


def test_samples_share_one_prompt_prefill(server: ServerProcess, client: OpenAI) -> None:
    """8 samples of a long prompt: every sample after the first reads the prompt's full KV
    blocks from the prefix cache, since the samples are separate engine requests with the same
    prompt tokens, submitted together, and prefix caching shares full blocks between them."""
    long_question = [{"role": "user", "content": "Here is a story. " + "The cat sat. " * 180
                      + "How many times did the cat sit?"}]
    hits = "vllm:prefix_cache_hits_total"
    before = metric_value(server.base_url, hits)
    reply = client.chat.completions.create(
        model="smollm2", messages=long_question, temperature=0.8, max_tokens=4, seed=5,
        extra_body={"strategy": {"name": "best_of_n", "n": 8}},
    )
    prompt = reply.usage.prompt_tokens
    assert prompt > 600
    reused = metric_value(server.base_url, hits) - before
    block = kv_block_size(server.base_url)
    assert reused >= 7 * (prompt // block) * block, (reused, prompt)


def test_a_short_prompt_is_prefilled_once_not_once_per_sample(
    server: ServerProcess, client: OpenAI
) -> None:
    """A prompt shorter than vLLM-CPU's own default block (128 tokens) was prefilled once per
    sample: prefix caching reuses full blocks only. Refinery's default block size on CPU makes
    every sample after the first recompute only the prompt's last, partial block; the engine's
    own counters (queried − cache hits) show what was computed."""
    samples = 8
    queries, hits = "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"
    before = metric_value(server.base_url, queries) - metric_value(server.base_url, hits)
    reply = client.chat.completions.create(
        model="smollm2", temperature=0.8, max_tokens=2, seed=3,
        messages=[{"role": "user", "content": f"{uuid.uuid4().hex}: name three colours of "
                   "the rainbow, then say which one you like best and why, in one sentence."}],
        extra_body={"strategy": {"name": "self_consistency", "stop": "fixed",
                                 "max_samples": samples}},
    )
    computed = metric_value(server.base_url, queries) - metric_value(server.base_url, hits)
    computed -= before
    prompt, block = reply.usage.prompt_tokens, kv_block_size(server.base_url)
    assert prompt < 128, prompt
    assert prompt >= block, (prompt, block)  # at least one full block to share
    assert computed < samples * prompt, (computed, prompt)
    assert computed <= prompt + (samples - 1) * (prompt % block), (computed, prompt, block)


def test_strategy_metrics(server: ServerProcess, client: OpenAI) -> None:
    base = server.base_url
    before = metric_value(base, "refinery_strategy_requests_total", strategy="self_consistency")
    samples_before = metric_value(base, "refinery_strategy_samples_count",
                                  strategy="self_consistency")
    client.chat.completions.create(
        model="smollm2", messages=QUESTION, **SAMPLING,
        extra_body={"strategy": {"name": "self_consistency", "stop": "fixed", "max_samples": 3}},
    )
    assert metric_value(base, "refinery_strategy_requests_total",
                        strategy="self_consistency") == before + 1
    assert metric_value(base, "refinery_strategy_samples_count",
                        strategy="self_consistency") == samples_before + 1
    assert metric_value(base, "refinery_subrequest_tokens_total", kind="completion") > 0
    assert metric_value(base, "refinery_subrequest_tokens_total", kind="prompt") > 0
    assert "refinery_samples_saved_total" in httpx.get(f"{base}/metrics").text
    assert metric_value(base, "refinery_subrequests_running") == 0


LONG_STRATEGY = {"model": "smollm2", "messages": [{"role": "user", "content": "Count to 1000."}],
                 "temperature": 0.8, "max_tokens": 3000, "ignore_eos": True,
                 "strategy": {"name": "best_of_n", "n": 8}}


def test_disconnect_aborts_every_sub_request(server: ServerProcess) -> None:
    assert_a_disconnect_aborts_every_sub_request(server.base_url, LONG_STRATEGY, 8)


def test_streaming_disconnect_aborts_every_sub_request(server: ServerProcess) -> None:
    base = server.base_url
    with httpx.stream("POST", f"{base}/v1/chat/completions",
                      json={**LONG_STRATEGY, "stream": True}, timeout=60) as response:
        lines = response.iter_lines()  # kept referenced: dropping it closes the connection
        assert next(lines).startswith(":")
        assert wait_for_metric(base, "refinery_subrequests_running", 8, timeout=10) == 8
    assert wait_for_metric(base, "refinery_subrequests_running", 0, timeout=5) == 0
    assert wait_for_metric(base, "vllm:num_requests_running", 0, timeout=5) == 0


def test_fifty_clients_dropping_strategy_requests_at_once_leak_nothing(
    server: ServerProcess
) -> None:
    # 50 × 4 = 200 sequences: within the session server's admission bound (128 × 2).
    storm = {**LONG_STRATEGY, "strategy": {"name": "self_consistency", "stop": "fixed",
                                           "max_samples": 4}}
    assert_a_disconnect_storm_leaks_nothing(server.base_url, storm, clients=50, samples=4)
