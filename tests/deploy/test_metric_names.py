"""Every metric the dashboard, the alerts and the autoscalers read is one Refinery exports.

A typo in a panel or an alert does not fail anywhere else: the panel stays empty and the alert
never fires. Offline, the expressions are checked against Refinery's metric definitions and
vLLM's stat-logger source; the e2e test checks them against a live server's /metrics.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import pytest

from tests.deploy.chart import adapter_expressions, find, promql_expressions
from tests.deploy.known_metrics import EXTERNAL_SERIES, offline_series
from tests.deploy.promql import exported_series, metric_names, unknown_series
from tests.servers import ServerProcess

Manifests = list[dict[str, Any]]

# What the issue asks the dashboard and alerts to show, by the series that shows it.
DASHBOARD_MUST_READ = {
    "requests": "refinery_requests_total",
    "latency": "refinery_request_duration_seconds_bucket",
    "time to first token": "vllm:time_to_first_token_seconds_bucket",
    "strategy samples used": "refinery_strategy_samples_sum",
    "strategy samples saved": "refinery_samples_saved_total",
    "sub-requests running": "refinery_subrequests_running",
    "KV-cache usage": "vllm:kv_cache_usage_perc",
    "queue depth": "vllm:num_requests_waiting",
    "outstanding sequences (admission)": "refinery_outstanding_sequences",
    "admission rejections": "refinery_admission_rejected_total",
}


def shipped_expressions(examples: dict[str, Manifests], all_features: Manifests) -> dict[str, str]:
    expressions = dict(adapter_expressions())
    for name, manifests in {**examples, "all-features": all_features}.items():
        for where, expr in promql_expressions(manifests).items():
            expressions[f"{name}: {where}"] = expr
    return expressions


def test_the_chart_ships_dashboard_alert_and_autoscaling_queries(
    examples: dict[str, Manifests], all_features: Manifests
) -> None:
    expressions = shipped_expressions(examples, all_features)
    kinds = {where.split(": ", 1)[1].split("/", 1)[0] for where in expressions if ": " in where}
    assert {"PrometheusRule", "ScaledObject", "ConfigMap"} <= kinds
    assert any("prometheus-adapter" in where for where in expressions)


def test_chart_reads_only_series_refinery_exports(
    examples: dict[str, Manifests], all_features: Manifests
) -> None:
    missing = unknown_series(
        shipped_expressions(examples, all_features), offline_series(), EXTERNAL_SERIES
    )
    assert not missing, f"metrics nobody exports: {json.dumps(missing, default=sorted, indent=1)}"


def test_a_misspelled_dashboard_metric_fails_the_check(all_features: Manifests) -> None:
    broken = copy.deepcopy(all_features)
    (configmap,) = [m for m in find(broken, "ConfigMap") if m["metadata"]["name"].endswith(
        "-dashboard")]
    key = next(iter(configmap["data"]))
    configmap["data"][key] = configmap["data"][key].replace(
        "vllm:kv_cache_usage_perc", "vllm:kv_cache_usage_percent"
    )
    missing = unknown_series(promql_expressions(broken), offline_series(), EXTERNAL_SERIES)
    assert missing and all(names == {"vllm:kv_cache_usage_percent"} for names in missing.values())


def test_dashboard_shows_what_operators_asked_for(all_features: Manifests) -> None:
    read = {
        name
        for where, expr in promql_expressions(all_features).items()
        if "ConfigMap/" in where
        for name in metric_names(expr)
    }
    absent = {what: series for what, series in DASHBOARD_MUST_READ.items() if series not in read}
    assert not absent


@pytest.mark.e2e
def test_chart_reads_only_series_a_server_exports(
    server: ServerProcess, examples: dict[str, Manifests], all_features: Manifests
) -> None:
    # One plain and one strategy request, so that the labelled families carry samples too.
    with httpx.Client(base_url=server.base_url, timeout=120) as http:
        body = {"model": "smollm2", "messages": [{"role": "user", "content": "2+2?"}],
                "max_tokens": 4, "temperature": 0.8}
        assert http.post("/v1/chat/completions", json=body).status_code == 200
        strategy = {**body, "strategy": {"name": "best_of_n", "n": 2}}
        assert http.post("/v1/chat/completions", json=strategy).status_code == 200
        exposition = http.get("/metrics").text
    exported = exported_series(exposition)
    assert "vllm:num_requests_waiting" in exported, "the engine's metrics are missing"
    missing = unknown_series(
        shipped_expressions(examples, all_features), exported, EXTERNAL_SERIES
    )
    assert not missing, f"metrics /metrics lacks: {json.dumps(missing, default=sorted, indent=1)}"
