"""The metric series Refinery exports, known without starting a server.

Refinery's own metrics come from `server.metrics` (rendered by prometheus_client, exactly as
/metrics renders them). vLLM registers its engine metrics only once an engine runs, so its
names and types are read from the source of its Prometheus stat logger
(vllm/v1/metrics/loggers.py) without importing vLLM. The live test in test_metric_names.py
checks the same expressions against a real server's /metrics.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import cache
from pathlib import Path

from prometheus_client import REGISTRY, generate_latest

from tests.deploy.promql import exported_series

__all__ = ["EXTERNAL_SERIES", "offline_series", "vllm_metric_types"]

# Series the chart reads that no Refinery process exports, and who provides them.
EXTERNAL_SERIES = {
    "up": "Prometheus, for every scrape target (1 when the scrape of /metrics succeeded)",
}

_CONSTRUCTORS = {"_gauge_cls": "gauge", "_counter_cls": "counter", "_histogram_cls": "histogram"}


def _vllm_loggers_source() -> Path:
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("vLLM is not installed: run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "v1" / "metrics" / "loggers.py"


@cache
def vllm_metric_types() -> dict[str, str]:
    """`vllm:*` metric family name → type, from `self._<kind>_cls(name=...)` calls."""
    tree = ast.parse(_vllm_loggers_source().read_text())
    types: dict[str, str] = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        kind = _CONSTRUCTORS.get(node.func.attr)
        for keyword in node.keywords:
            if (
                kind
                and keyword.arg == "name"
                and isinstance(keyword.value, ast.Constant)
                and isinstance(keyword.value.value, str)
            ):
                types[keyword.value.value] = kind
    return types


def _exposition_of(types: dict[str, str]) -> str:
    """A /metrics page declaring these families (no samples), for exported_series()."""
    lines = []
    for name, kind in types.items():
        exposed = f"{name}_total" if kind == "counter" and not name.endswith("_total") else name
        lines += [f"# HELP {exposed} -", f"# TYPE {exposed} {kind}"]
    return "\n".join(lines) + "\n"


def offline_series() -> dict[str, str]:
    """Series names (with their types) that Refinery with vLLM exports."""
    import server.metrics  # noqa: F401  registers Refinery's metrics in the default registry

    series = exported_series(generate_latest(REGISTRY).decode())
    series.update(exported_series(_exposition_of(vllm_metric_types())))
    return series
