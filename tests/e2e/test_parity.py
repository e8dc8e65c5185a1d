"""Plain requests through Refinery give exactly what `vllm serve` gives on the same model/flags."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import ServerProcess, running, start_vllm

CASES = [
    ("/v1/chat/completions",
     {"messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 24,
      "temperature": 0}),
    ("/v1/chat/completions",
     {"messages": [{"role": "system", "content": "Answer briefly."},
                   {"role": "user", "content": "What is the capital of Italy?"}],
      "max_tokens": 16, "temperature": 0, "logprobs": True, "top_logprobs": 2}),
    ("/v1/chat/completions",
     {"messages": [{"role": "user", "content": "Tell me a joke."}], "max_tokens": 24,
      "temperature": 1.0, "seed": 42, "n": 2}),
    ("/v1/completions",
     {"prompt": "The three primary colours are", "max_tokens": 16, "temperature": 0}),
    ("/v1/completions",
     {"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0.9, "top_p": 0.9,
      "seed": 7, "logprobs": 1}),
    ("/v1/completions",
     {"prompt": "List: apples, pears,", "max_tokens": 16, "temperature": 0, "stop": ["\n"]}),
]


@pytest.fixture(scope="module")
def vllm_server(embedded_model_dir: Path, logs_dir: Path) -> Iterator[ServerProcess]:
    with running(start_vllm(logs_dir, embedded_model_dir)) as live:
        yield live


def _comparable(body: dict) -> dict:
    """Drop what legitimately differs between two servers: ids and timestamps."""
    return {k: v for k, v in body.items() if k not in ("id", "created")}


@pytest.mark.parametrize(("path", "body"), CASES)
def test_plain_request_matches_vllm_serve(
    server: ServerProcess, vllm_server: ServerProcess, path: str, body: dict
) -> None:
    request = {"model": "smollm2", **body}
    ours = httpx.post(f"{server.base_url}{path}", json=request, timeout=120)
    theirs = httpx.post(f"{vllm_server.base_url}{path}", json=request, timeout=120)
    assert ours.status_code == theirs.status_code == 200, (ours.text, theirs.text)
    assert _comparable(ours.json()) == _comparable(theirs.json())


def test_streamed_chunks_match_vllm_serve(
    server: ServerProcess, vllm_server: ServerProcess
) -> None:
    request = {"model": "smollm2", "prompt": "The capital of France is", "max_tokens": 8,
               "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}

    def events(base_url: str) -> list[str]:
        with httpx.stream("POST", f"{base_url}/v1/completions", json=request, timeout=120) as r:
            return [line for line in r.iter_lines() if line.startswith("data:")]

    ours, theirs = events(server.base_url), events(vllm_server.base_url)
    assert len(ours) == len(theirs)
    assert ours[-1] == theirs[-1] == "data: [DONE]"
    for a, b in zip(ours[:-1], theirs[:-1], strict=True):
        assert _comparable(json.loads(a[5:])) == _comparable(json.loads(b[5:]))
