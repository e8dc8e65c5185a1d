"""Reading a live server's /metrics in tests."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["kv_block_size", "metric_value", "scrape", "wait_for_metric"]


def scrape(base_url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric_value(base_url: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0 if none)."""
    wanted = set(labels.items())
    return sum(
        value for (sample, sample_labels), value in scrape(base_url).items()
        if sample == name and wanted <= sample_labels
    )


def wait_for_metric(
    base_url: str, name: str, expected: float, timeout: float, **labels: str
) -> float:
    """Poll until the metric equals `expected`; returns the last value seen."""
    deadline = time.monotonic() + timeout
    value = metric_value(base_url, name, **labels)
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.1)
        value = metric_value(base_url, name, **labels)
    return value


def kv_block_size(base_url: str) -> int:
    """The engine's KV block size, as vLLM reports it in `vllm:cache_config_info`."""
    labels = next(labels for (name, labels) in scrape(base_url)
                  if name == "vllm:cache_config_info")
    return int(dict(labels)["block_size"])
