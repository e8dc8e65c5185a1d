"""Which metric series a PromQL expression reads, and which series a /metrics page exports.

Enough of PromQL to find the metric names in the chart's alerts, dashboard and autoscaling
queries: string literals, label matchers, ranges, grouping clauses and Grafana variables are
removed, function and aggregation calls are recognised by their opening parenthesis, and
every other identifier that is not a keyword is a metric name. Expressions that select by
`__name__` cannot be checked that way and are refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "PromQLError",
    "exported_series",
    "metric_names",
    "unknown_series",
]

# Binary operators and modifiers spelled as words; `bool`, `offset`, `inf`, `nan` are not names.
_KEYWORDS = frozenset({
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan",
})
# Every PromQL function and aggregation (Prometheus 3.x) and Grafana's template functions.
_FUNCTIONS = frozenset({
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "days_in_month", "day_of_month", "day_of_week", "day_of_year", "deg",
    "delta", "deriv", "exp", "floor", "histogram_avg", "histogram_count", "histogram_fraction",
    "histogram_quantile", "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters",
    "double_exponential_smoothing", "hour", "idelta", "increase", "irate", "label_join",
    "label_replace", "last_over_time", "ln", "log10", "log2", "mad_over_time", "max_over_time",
    "min_over_time", "minute", "month", "pi", "predict_linear", "present_over_time",
    "quantile_over_time", "rad", "rate", "resets", "round", "scalar", "sgn", "sin", "sinh",
    "sort", "sort_by_label", "sort_by_label_desc", "sort_desc", "sqrt", "stddev_over_time",
    "stdvar_over_time", "sum_over_time", "tan", "tanh", "time", "timestamp", "vector", "year",
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
    # Grafana template-variable queries.
    "label_values", "label_names", "metrics", "query_result",
})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_TOKEN = re.compile(r"\d[\w.]*|[A-Za-z_:][A-Za-z0-9_:]*")


class PromQLError(ValueError):
    """An expression this checker cannot read (unbalanced brackets, `__name__` matchers)."""


def _check_balanced(expr: str) -> None:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in _STRING.sub('""', expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            raise PromQLError(f"unbalanced {char!r} in {expr!r}")
    if stack:
        raise PromQLError(f"unclosed {stack[-1]!r} in {expr!r}")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (as written: `foo_bucket`, not `foo`)."""
    _check_balanced(expr)
    if "__name__" in expr:
        raise PromQLError(f"selecting by __name__ cannot be checked: {expr!r}")
    text = _STRING.sub('""', expr)
    text = _GRAFANA_VARIABLE.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    # label_values(metric, label): the second argument is a label, not a metric.
    text = re.sub(r"\blabel_values\s*\(([^,()]*),[^()]*\)", r"label_values(\1)", text)
    names: set[str] = set()
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token[0].isdigit() or token.lower() in _KEYWORDS:
            continue
        if text[match.end():].lstrip().startswith("("):
            if token not in _FUNCTIONS:
                raise PromQLError(f"unknown function {token!r} in {expr!r}")
            continue
        names.add(token)
    return names


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "gauge": ("",),
    "stateset": ("",),
    "unknown": ("",),
}


def exported_series(exposition: str) -> dict[str, str]:
    """Series names a /metrics page offers, each with its family's type.

    Derived from the families' types (`# TYPE`), so a labelled histogram that has not observed
    anything yet still counts as exporting `_bucket`, `_sum` and `_count`; the sample names seen
    are added too.
    """
    series: dict[str, str] = {}
    for family in text_string_to_metric_families(exposition):
        for suffix in _SUFFIXES.get(family.type, ("",)):
            series[family.name + suffix] = family.type
        for sample in family.samples:
            series.setdefault(sample.name, family.type)
    return series


def unknown_series(
    expressions: Mapping[str, str], exported: Iterable[str], external: Iterable[str] = ()
) -> dict[str, set[str]]:
    """Per expression location, the names it reads that are neither exported nor external."""
    known = set(exported) | set(external)
    missing: dict[str, set[str]] = {}
    for where, expr in expressions.items():
        unknown = metric_names(expr) - known
        if unknown:
            missing[where] = unknown
    return missing
