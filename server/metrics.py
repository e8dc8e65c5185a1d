"""Refinery's own Prometheus metrics, defined once. vLLM's engine metrics live in the same
default registry (its PrometheusStatLogger registers there), so `/metrics` serves both."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "ADMISSION_REJECTED",
    "DSC_PREALLOCATION",
    "OUTSTANDING_SEQUENCES",
    "OUTSTANDING_SEQUENCES_LIMIT",
    "REFINE_ITERATIONS",
    "REFINE_ROUTES",
    "REQUESTS",
    "REQUEST_DURATION",
    "SAMPLES_SAVED",
    "SAMPLES_TERMINATED",
    "STRATEGY_REQUESTS",
    "STRATEGY_SAMPLES",
    "SUBREQUESTS_RUNNING",
    "SUBREQUEST_TOKENS",
    "TIME_TO_FIRST_TOKEN",
]

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

ADMISSION_REJECTED = Counter(
    "refinery_admission_rejected",
    "Requests refused before any work started, by reason: overloaded (429: the outstanding "
    "sequences are at their bound), over_cap (400: over a per-request cap on sequences, tokens "
    "or messages), body_too_large (413).",
    ["reason"],
)
OUTSTANDING_SEQUENCES = Gauge(
    "refinery_outstanding_sequences",
    "Engine sequences held by admitted requests: n per prompt of a plain request, the whole "
    "sample budget of a strategy request, from admission until the response ends.",
)
OUTSTANDING_SEQUENCES_LIMIT = Gauge(
    "refinery_outstanding_sequences_limit",
    "The admission bound on refinery_outstanding_sequences (0 until known: the default "
    "bound is derived once the engine has loaded).",
)

STRATEGY_REQUESTS = Counter(
    "refinery_strategy_requests",
    "Requests that ran a test-time strategy, by strategy.",
    ["strategy"],
)
STRATEGY_SAMPLES = Histogram(
    "refinery_strategy_samples",
    "Samples a strategy request used (finished samples its decision rests on).",
    ["strategy"],
    buckets=(1, 2, 4, 5, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64),
)
SAMPLES_SAVED = Counter(
    "refinery_samples_saved",
    "Samples not drawn thanks to early stopping: the sample budget minus the samples used.",
    ["strategy"],
)
SUBREQUESTS_RUNNING = Gauge(
    "refinery_subrequests_running",
    "Strategy sub-requests (one per sample) currently in the engine.",
)
SUBREQUEST_TOKENS = Counter(
    "refinery_subrequest_tokens",
    "Tokens of strategy sub-requests: prompt (counted once per request: its prefill is "
    "shared), completion (finished samples) and aborted (samples cut off by early stopping).",
    ["kind"],
)
REFINE_ITERATIONS = Histogram(
    "refinery_refine_iterations",
    "Refinement iterations (rewrites after the first draft) one refinement loop ran.",
    ["strategy"],
    buckets=(0, 1, 2, 3, 4, 5, 6, 7, 8),
)
REFINE_ROUTES = Counter(
    "refinery_refine_route",
    "Questions adaptive_refine routed as easy (answered by the vote) or hard (refined).",
    ["route"],
)
SAMPLES_TERMINATED = Counter(
    "refinery_samples_terminated",
    "Samples a strategy's token watcher stopped mid-generation (DeepConf's low-confidence "
    "traces), by strategy.",
    ["strategy"],
)
DSC_PREALLOCATION = Histogram(
    "refinery_dsc_preallocation",
    "Samples DSC pre-allocated for a request from its group's recent stopping sizes.",
    buckets=(1, 2, 4, 8, 12, 16, 20, 24, 32, 40, 48, 64),
)
