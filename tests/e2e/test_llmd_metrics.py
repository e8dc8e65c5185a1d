"""The series the llm-d endpoint picker scrapes from a model server, on a live Refinery.

The picker (llm-d Router v0.10.0, core-metrics-extractor's vLLM mapping) reads
`vllm:num_requests_waiting`, `vllm:num_requests_running`, `vllm:kv_cache_usage_perc`,
`vllm:cache_config_info` (labels `block_size`, `num_gpu_blocks`) and `vllm:lora_requests_info`.
Refinery serves vLLM's own stat-logger gauges, so a strategy request's samples count as the
engine requests they are: the load signal the picker's queue and KV-cache scorers need.
"""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.disconnects import abandoned_request
from tests.e2e.prometheus import scrape, wait_for_metric
from tests.servers import ServerProcess

GAUGES = ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc",
          "vllm:cache_config_info")


def _families(base_url: str) -> dict[str, object]:
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_the_pickers_gauges_are_served_with_vllms_labels(server: ServerProcess) -> None:
    families = _families(server.base_url)
    for name in GAUGES:
        assert families[name].type == "gauge", name  # type: ignore[attr-defined]
    (usage,) = families["vllm:kv_cache_usage_perc"].samples  # type: ignore[attr-defined]
    assert 0.0 <= usage.value <= 1.0
    (info,) = families["vllm:cache_config_info"].samples  # type: ignore[attr-defined]
    assert info.value == 1.0
    assert int(info.labels["block_size"]) > 0 and int(info.labels["num_gpu_blocks"]) > 0
    for name in ("vllm:num_requests_waiting", "vllm:num_requests_running"):
        (sample,) = families[name].samples  # type: ignore[attr-defined]
        assert sample.labels["model_name"] == "smollm2"


def test_lora_info_is_absent_without_lora_as_in_vllm(server: ServerProcess) -> None:
    # vLLM 0.32 registers vllm:lora_requests_info only when LoRA is enabled (--enable-lora);
    # the picker reads a missing family as "no adapter loaded" (llm-d-router #1467).
    assert "vllm:lora_requests_info" not in _families(server.base_url)


def _engine_requests(base_url: str) -> float:
    """Running plus waiting engine requests, from one scrape (both gauges at the same moment)."""
    values = scrape(base_url)
    return sum(value for (name, _), value in values.items()
               if name in ("vllm:num_requests_running", "vllm:num_requests_waiting"))


def test_engine_request_counts_include_every_strategy_sample(server: ServerProcess) -> None:
    # The request is long and abandoned once seen, rather than short and watched from a thread
    # until it returns: on a slow runner one scrape outlasted a whole short request (CI saw a
    # single reading, taken before the engine had it).
    samples = 8
    assert wait_for_metric(server.base_url, "vllm:num_requests_running", 0, timeout=30) == 0
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Count to fifty."}],
            "max_tokens": 1024, "ignore_eos": True, "temperature": 0.8,
            "strategy": {"name": "best_of_n", "n": samples}}
    seen: list[float] = []
    with abandoned_request(server.base_url, body):
        deadline = time.monotonic() + 60
        while (not seen or seen[-1] != samples) and time.monotonic() < deadline:
            seen.append(_engine_requests(server.base_url))
            time.sleep(0.05)
    # One HTTP request; the engine (and so the picker's scorers) sees every one of its samples,
    # and never more.
    assert seen[-1] == samples, seen
    assert max(seen) <= samples, seen
    assert wait_for_metric(server.base_url, "vllm:num_requests_running", 0, timeout=30) == 0
