"""The PromQL reader the metric-name checks rest on: it must find every name, and only names."""

from __future__ import annotations

import pytest

from tests.deploy.promql import PromQLError, exported_series, metric_names, unknown_series

EXPOSITION = """\
# HELP refinery_requests_total HTTP requests answered.
# TYPE refinery_requests_total counter
refinery_requests_total{endpoint="/v1/completions",status="200"} 3.0
# HELP refinery_request_duration_seconds Time to the last byte.
# TYPE refinery_request_duration_seconds histogram
# HELP refinery_subrequests_running Sub-requests in the engine.
# TYPE refinery_subrequests_running gauge
refinery_subrequests_running 0.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="smollm2"} 0.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="smollm2"} 12.0
"""


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('vllm:num_requests_waiting{namespace="llm",service="refinery"} > 3',
         {"vllm:num_requests_waiting"}),
        ("histogram_quantile(0.95, sum by (le) (rate(refinery_request_duration_seconds_bucket"
         '{endpoint=~"/v1/.*"}[5m])))', {"refinery_request_duration_seconds_bucket"}),
        ("sum(rate(a_total[5m])) by (job) / ignoring (x) group_left (y) sum(b_total) without (z)",
         {"a_total", "b_total"}),
        ('(up{job="x"} == 1) unless on (namespace, pod) vllm:num_requests_running{job="x"}',
         {"up", "vllm:num_requests_running"}),
        ('rate(x_total{a="sum(fake_metric)"}[$__rate_interval] offset 1h) > bool 1e3',
         {"x_total"}),
        ('sum by (pod) (vllm:kv_cache_usage_perc{namespace=~"$namespace",pod=~"${pod}"})',
         {"vllm:kv_cache_usage_perc"}),
        ('label_values(refinery_subrequests_running{namespace=~"$namespace"}, service)',
         {"refinery_subrequests_running"}),
        ("max_over_time(gauge_one[10m:1m]) and on() vector(1)", {"gauge_one"}),
    ],
)
def test_metric_names_finds_exactly_the_series_an_expression_reads(
    expr: str, names: set[str]
) -> None:
    assert metric_names(expr) == names


@pytest.mark.parametrize(
    "expr",
    [
        "sum(rate(x_total[5m])",
        "x_total{a=\"b\"",
        "rate(x_total[5m]))",
        'count({__name__=~"vllm:.*"})',
        "sum(rat(x_total[5m]))",
    ],
)
def test_metric_names_refuses_what_it_cannot_check(expr: str) -> None:
    with pytest.raises(PromQLError):
        metric_names(expr)


def test_exported_series_expands_counters_and_histograms_into_their_sample_names() -> None:
    series = exported_series(EXPOSITION)
    assert series["refinery_requests_total"] == "counter"
    assert series["vllm:prompt_tokens_total"] == "counter"
    # A labelled histogram that observed nothing yet still exports its three series.
    for suffix in ("_bucket", "_sum", "_count"):
        assert series[f"refinery_request_duration_seconds{suffix}"] == "histogram"
    assert series["refinery_subrequests_running"] == "gauge"
    assert series["vllm:num_requests_waiting"] == "gauge"
    # Family names of counters and histograms are not series.
    assert "refinery_requests" not in series
    assert "refinery_request_duration_seconds" not in series


@pytest.mark.parametrize(
    ("bad_name", "why"),
    [
        ("refinery_request_duration_second_bucket", "typo in the unit"),
        ("refinery_request_duration_seconds", "histogram read without _bucket/_sum/_count"),
        ("refinery_requests", "counter read without _total"),
        ("vllm:num_requests_waitin", "typo in a vLLM name"),
        ("vllm_num_requests_waiting", "underscore where vLLM has a colon"),
        ("refinery_subrequests_running_total", "_total on a gauge"),
    ],
)
def test_unknown_series_reports_a_misspelled_metric(bad_name: str, why: str) -> None:
    expressions = {
        "good panel": "sum(rate(refinery_requests_total[5m]))",
        "bad panel": f"sum(rate({bad_name}[5m]))",
    }
    missing = unknown_series(expressions, exported_series(EXPOSITION))
    assert missing == {"bad panel": {bad_name}}, why


def test_unknown_series_accepts_declared_external_series() -> None:
    expressions = {"alert": "up == 0"}
    assert unknown_series(expressions, exported_series(EXPOSITION)) == {"alert": {"up"}}
    assert unknown_series(expressions, exported_series(EXPOSITION), external={"up"}) == {}
