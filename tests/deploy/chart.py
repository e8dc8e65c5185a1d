"""Rendering the Helm chart the way an operator installs it, and reading what it renders."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.tools import REPO, run_tool

__all__ = [
    "ALL_FEATURES",
    "CHART",
    "EXAMPLES",
    "NAMESPACE",
    "RELEASE",
    "RenderError",
    "STACK_EXAMPLES",
    "adapter_expressions",
    "containers",
    "dashboard_expressions",
    "find",
    "pod_specs",
    "promql_expressions",
    "render",
]

CHART = REPO / "deploy" / "helm" / "refinery"
# Examples for a serving stack, tested in test_inference_pool.py: llm-d.yaml (values that add the
# endpoint picker's Deployment and Service) and kserve.yaml (a KServe manifest, not values).
STACK_EXAMPLES = ("llm-d.yaml", "kserve.yaml")
EXAMPLES = sorted(
    path for path in (REPO / "deploy" / "examples").glob("*.yaml")
    if path.name not in STACK_EXAMPLES
)
RELEASE = "refinery"
NAMESPACE = "llm"
# Every optional object switched on (with the default KEDA autoscaling).
ALL_FEATURES = (
    "metrics.serviceMonitor.enabled=true",
    "metrics.prometheusRule.enabled=true",
    "metrics.dashboard.enabled=true",
    "autoscaling.enabled=true",
    "networkPolicy.enabled=true",
    "refinery.apiKeys.keys={key-one,key-two}",
)


class RenderError(RuntimeError):
    """`helm template` refused the values."""


def render(
    *values_files: Path, set_values: Iterable[str] = (), helm: str = "helm"
) -> list[dict[str, Any]]:
    """`helm template` the chart: the manifests, in order, empty documents dropped."""
    args: list[str | Path] = ["template", RELEASE, CHART, "--namespace", NAMESPACE]
    for path in values_files:
        args += ["--values", path]
    for assignment in set_values:
        args += ["--set", assignment]
    done = run_tool(helm, *args)
    if done.returncode != 0:
        raise RenderError(done.stderr.strip())
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def find(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == kind]


def pod_specs(manifests: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(role, pod spec) of every pod template: server, leader or worker."""
    for m in manifests:
        if m["kind"] == "Deployment":
            yield "server", m["spec"]["template"]["spec"]
        elif m["kind"] == "LeaderWorkerSet":
            template = m["spec"]["leaderWorkerTemplate"]
            yield "leader", template["leaderTemplate"]["spec"]
            yield "worker", template["workerTemplate"]["spec"]


def containers(manifests: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for role, spec in pod_specs(manifests):
        for container in spec["containers"]:
            yield role, container


def promql_expressions(manifests: list[dict[str, Any]]) -> dict[str, str]:
    """Every PromQL expression the rendered chart ships, keyed by where it is."""
    found: dict[str, str] = {}
    for m in manifests:
        name = f"{m['kind']}/{m['metadata']['name']}"
        if m["kind"] == "PrometheusRule":
            for group in m["spec"]["groups"]:
                for rule in group["rules"]:
                    found[f"{name} {rule.get('alert') or rule.get('record')}"] = rule["expr"]
        elif m["kind"] == "ScaledObject":
            for i, trigger in enumerate(m["spec"]["triggers"]):
                if trigger["type"] == "prometheus":
                    found[f"{name} trigger {i}"] = trigger["metadata"]["query"]
        elif m["kind"] == "ConfigMap" and m["metadata"]["name"].endswith("-dashboard"):
            for key, text in m["data"].items():
                found.update(dashboard_expressions(json.loads(text), f"{name} {key}"))
    return found


def dashboard_expressions(dashboard: dict[str, Any], where: str) -> dict[str, str]:
    found: dict[str, str] = {}
    panels = list(dashboard.get("panels", []))
    while panels:
        panel = panels.pop()
        panels.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            found[f"{where} panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            found[f"{where} variable ${variable['name']}"] = text
    return found


def adapter_expressions() -> dict[str, str]:
    """The series prometheus-adapter is told to serve (deploy/monitoring)."""
    path = REPO / "deploy" / "monitoring" / "prometheus-adapter-values.yaml"
    values = yaml.safe_load(path.read_text())
    return {
        f"{path.name} rule {i}": rule["seriesQuery"]
        for i, rule in enumerate(values["rules"]["custom"])
    }


EXAMPLE_IDS = [path.stem for path in EXAMPLES]
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def example_values(name: str) -> dict[str, Any]:
    """deploy/examples/<name>.yaml as values."""
    return yaml.safe_load((REPO / "deploy" / "examples" / f"{name}.yaml").read_text())


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """A container's environment: name → value, or the valueFrom reference."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def server_container(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """The one container that runs `refinery serve` (the server, or the multi-node leader)."""
    (container,) = [c for role, c in containers(manifests) if role in ("server", "leader")]
    return container
