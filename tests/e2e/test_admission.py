"""Admission control, caps and the keys file on the real engine: the default bound derived from
vLLM's max_num_seqs, prompts past the context still vLLM's 400, and, on one server with a tiny
bound, a real 429 that the openai SDK's retry gets past, a bounded overload answered only 200
or 429, a 504 that aborts every sub-request, API keys read from a file and /metrics behind
them."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import ServerProcess, running, start_refinery

pytestmark = pytest.mark.e2e

USER = [{"role": "user", "content": "Count from one to one thousand, in words."}]
KEY = "sk-e2e-admission-key-7f3a"
BOUND = 4
# The small server's time limit: long enough that the held request of the 429 test outlives
# the steps that test takes on a loaded machine, short enough for CI.
TIMEOUT_S = 30
# A request that runs far longer than TIMEOUT_S: 4 samples that ignore EOS for 8000 tokens
# (8000 engine steps: minutes on 2 cores, still over TIMEOUT_S at 4 ms a step).
LONG = {"max_tokens": 8000, "ignore_eos": True, "temperature": 0.8,
        "strategy": {"name": "best_of_n", "n": BOUND}}


def metric(base_url: str, name: str, headers: dict[str, str] | None = None,
           **labels: str) -> float:
    text = httpx.get(f"{base_url}/metrics", headers=headers, timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == name and labels.items() <= sample.labels.items())


def wait_for(base_url: str, name: str, expected: float, headers: dict[str, str],
             timeout: float = 30) -> float:
    deadline = time.monotonic() + timeout
    value = metric(base_url, name, headers)
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.1)
        value = metric(base_url, name, headers)
    return value


# --- the session server -----------------------------------------------------------------------

def test_the_default_bound_is_max_num_seqs_times_the_queue_factor(server: ServerProcess) -> None:
    # vLLM-CPU's default max_num_seqs for an API server is 128 (EngineArgs' CPU defaults);
    # the default queue factor is 2.
    assert metric(server.base_url, "refinery_outstanding_sequences_limit") == 128 * 2
    assert "admitting up to 256 outstanding engine sequences" in server.log_path.read_text()


@pytest.mark.parametrize("strategy", [None, "bon8"])
def test_a_prompt_past_the_context_is_vllms_400_plain_or_strategy(
    server: ServerProcess, strategy: str | None
) -> None:
    body: dict[str, Any] = {"model": "smollm2", "max_tokens": 1, "temperature": 0.7,
                            "messages": [{"role": "user", "content": "hello " * 9000}]}
    if strategy:
        body["strategy"] = strategy
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 400
    assert "context length" in response.json()["error"]["message"]
    assert metric(server.base_url, "refinery_outstanding_sequences") == 0


# --- one server with a tiny bound, a short time limit and a keys file ---------------------------

@pytest.fixture(scope="module")
def small(cache_dir: Path, logs_dir: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[ServerProcess]:
    keys = tmp_path_factory.mktemp("keys") / "api-keys"
    keys.write_text(f"{KEY}\nother-key\n")
    server = start_refinery(
        logs_dir, "--max-outstanding-sequences", str(BOUND),
        "--request-timeout", str(TIMEOUT_S), "--api-keys-file", str(keys), "--metrics-auth",
        env={"REFINERY_CACHE": str(cache_dir)}, name="admission",
    )
    with running(server) as live:
        yield live


AUTH = {"authorization": f"Bearer {KEY}"}


def test_a_full_server_answers_429_and_the_sdk_retry_gets_through(small: ServerProcess) -> None:
    base = small.base_url
    body = {"model": "smollm2", "messages": USER, "stream": True, **LONG}
    with httpx.Client(base_url=base, headers=AUTH, timeout=60) as http, \
            http.stream("POST", "/v1/chat/completions", json=body) as held:
        assert held.status_code == 200
        lines = held.iter_lines()
        first = next(lines)
        assert first == ": refinery: strategy running", first  # admitted with all 4
        held_now = metric(base, "refinery_outstanding_sequences", AUTH)
        assert held_now == BOUND, (held_now, small.log_tail(20))

        refused = httpx.post(f"{base}/v1/chat/completions", headers=AUTH, timeout=30,
                             json={"model": "smollm2", "messages": USER, "max_tokens": 2})
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "overloaded")

        # Retry-After is 1 s: ten retries outlast closing the held stream many times over.
        retrying = OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=10, timeout=120)
        replies: list[Any] = []
        worker = threading.Thread(target=lambda: replies.append(
            retrying.chat.completions.create(model="smollm2", messages=USER, max_tokens=2)))
        rejected = metric(base, "refinery_admission_rejected_total", AUTH, reason="overloaded")
        worker.start()
        assert wait_for(base, "refinery_admission_rejected_total", rejected + 1, AUTH) \
            == rejected + 1
    # The held stream is closed: its 4 sub-requests are aborted, its sequences free.
    worker.join(timeout=120)
    assert replies and replies[0].choices[0].message.content is not None
    assert wait_for(base, "refinery_subrequests_running", 0, AUTH) == 0
    assert wait_for(base, "refinery_outstanding_sequences", 0, AUTH) == 0


def test_a_bounded_overload_is_answered_200_or_429_and_leaves_nothing_held(
    small: ServerProcess,
) -> None:
    """Twelve closed-loop clients for 8 s offer 18 sequences to a bound of 4 (4.5×): plain
    requests and 2-sample strategy requests. Every answer is a 200 or a 429 with Retry-After,
    both happen, and nothing is left running or held afterwards."""
    base = small.base_url
    plain = {"model": "smollm2", "messages": USER, "max_tokens": 8, "ignore_eos": True}
    strategy = {**plain, "temperature": 0.8, "strategy": {"name": "best_of_n", "n": 2}}

    async def load() -> list[tuple[int, str | None]]:
        seen: list[tuple[int, str | None]] = []
        deadline = time.monotonic() + 8
        async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=60) as http:
            async def client(body: dict[str, Any]) -> None:
                while time.monotonic() < deadline:
                    response = await http.post("/v1/chat/completions", json=body)
                    seen.append((response.status_code, response.headers.get("retry-after")))
                    if response.status_code == 429:
                        assert response.json()["error"]["code"] == "overloaded"
                        await asyncio.sleep(0.2)  # shorter than Retry-After: more pressure

            await asyncio.gather(*(client(plain) for _ in range(6)),
                                 *(client(strategy) for _ in range(6)))
        return seen

    seen = asyncio.run(load())
    statuses = {status for status, _ in seen}
    assert statuses == {200, 429}, seen
    assert all(retry == "1" for status, retry in seen if status == 429)
    assert wait_for(base, "refinery_subrequests_running", 0, AUTH) == 0
    assert wait_for(base, "refinery_outstanding_sequences", 0, AUTH) == 0
    assert wait_for(base, "vllm:num_requests_running", 0, AUTH) == 0


def test_a_request_past_its_time_limit_is_a_504_and_every_sample_is_aborted(
    small: ServerProcess,
) -> None:
    client = OpenAI(base_url=f"{small.base_url}/v1", api_key=KEY, max_retries=0, timeout=120)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(
            model="smollm2", messages=USER,  # type: ignore[arg-type]
            max_tokens=8000, temperature=0.8,
            extra_body={"ignore_eos": True, "strategy": LONG["strategy"]},
        )
    assert err.value.status_code == 504
    assert err.value.body["code"] == "request_timeout"  # type: ignore[index]
    assert wait_for(small.base_url, "refinery_subrequests_running", 0, AUTH) == 0
    assert wait_for(small.base_url, "vllm:num_requests_running", 0, AUTH) == 0
    assert metric(small.base_url, "refinery_outstanding_sequences", AUTH) == 0


def test_keys_come_from_the_file_metrics_need_one_and_probes_stay_open(
    small: ServerProcess,
) -> None:
    base = small.base_url
    assert httpx.get(f"{base}/health").status_code == 200
    assert httpx.get(f"{base}/ready").status_code == 200
    assert httpx.get(f"{base}/metrics").status_code == 401
    assert httpx.get(f"{base}/metrics", headers=AUTH).status_code == 200
    other = OpenAI(base_url=f"{base}/v1", api_key="other-key", max_retries=0)
    assert other.models.list().data
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=f"{base}/v1", api_key=KEY + "x", max_retries=0).models.list()
    assert KEY not in small.log_path.read_text()
