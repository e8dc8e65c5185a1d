"""Refinery's own Prometheus metrics, defined once. vLLM's engine metrics live in the same
default registry (its PrometheusStatLogger registers there), so `/metrics` serves both."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = ["REQUEST_DURATION", "REQUESTS", "TIME_TO_FIRST_TOKEN"]

_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0,
)

REQUESTS = Counter(
    "refinery_requests",
    "HTTP requests answered, by endpoint and status code.",
    ["endpoint", "status"],
)
REQUEST_DURATION = Histogram(
    "refinery_request_duration_seconds",
    "Time from request arrival to the last byte of the response.",
    ["endpoint"],
    buckets=_LATENCY_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "refinery_time_to_first_token_seconds",
    "Streaming responses: time from request arrival to the first data chunk sent.",
    ["endpoint"],
    buckets=_LATENCY_BUCKETS,
)
