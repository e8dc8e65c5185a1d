"""The CEL rules (`x-kubernetes-validations`) of the vendored CRDs, in Python.

A JSON-schema validator skips CEL, and the API server would enforce it at apply time. Each rule
the chart's or the examples' objects reach is implemented here, keyed by its exact CEL text and
evaluated on the object as the API server sees it (CRD defaults applied where a rule reads a
defaulted field). A rule whose path exists in a checked object but has no implementation fails
the check (`UnimplementedRule`): an upstream CRD update that adds a rule cannot pass unnoticed.
Rules under paths no checked object sets are vacuous for it and are not implemented.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import yaml

from tests.deploy.crd_validation import crd_schemas

__all__ = ["CelRule", "UnimplementedRule", "cel_violations", "crd_rules"]

Node = Any


@dataclass(frozen=True)
class CelRule:
    path: str  # ".spec.targetPorts", "[]" for list items
    rule: str
    message: str


class UnimplementedRule(AssertionError):
    """A CEL rule applies to an object but this module cannot evaluate it."""


@cache
def crd_rules(kind: str, api_version: str) -> tuple[CelRule, ...]:
    """Every CEL rule of the served version, outside `.status`."""
    group, _, version = api_version.rpartition("/")
    (crd,) = [c for c in crd_schemas()[kind] if c.group == group]
    raw = yaml.load(crd.source.read_text(), Loader=yaml.CSafeLoader)
    (served,) = [v for v in raw["spec"]["versions"] if v["name"] == version]
    found: list[CelRule] = []

    def walk(schema: dict[str, Any], path: str) -> None:
        for entry in schema.get("x-kubernetes-validations", []):
            found.append(CelRule(path, entry["rule"], entry.get("message", "")))
        for name, child in schema.get("properties", {}).items():
            walk(child, f"{path}.{name}")
        if isinstance(schema.get("items"), dict):
            walk(schema["items"], f"{path}[]")
        if isinstance(schema.get("additionalProperties"), dict):
            walk(schema["additionalProperties"], f"{path}{{}}")

    walk(served["schema"]["openAPIV3Schema"], "")
    return tuple(rule for rule in found if not rule.path.startswith(".status"))


def _nodes(resource: Node, path: str) -> Iterator[Node]:
    """The values at `path` in the resource (none when a step is absent)."""
    nodes = [resource]
    for step in re.findall(r"\.[^.\[{]+|\[\]|\{\}", path):
        following: list[Node] = []
        for node in nodes:
            if step == "[]" and isinstance(node, list):
                following.extend(node)
            elif step == "{}" and isinstance(node, dict):
                following.extend(node.values())
            elif step.startswith(".") and isinstance(node, dict) and step[1:] in node:
                following.append(node[step[1:]])
        nodes = following
    yield from nodes


# --- the rules -------------------------------------------------------------------------------

def _unique_port_numbers(ports: list[dict[str, Any]]) -> bool:
    numbers = [p["number"] for p in ports]
    return len(numbers) == len(set(numbers))


def _same_parent(a: dict[str, Any], b: dict[str, Any]) -> bool:
    group = "gateway.networking.k8s.io"  # CRD defaults
    return (
        a.get("group", group) == b.get("group", group)
        and a.get("kind", "Gateway") == b.get("kind", "Gateway")
        and a["name"] == b["name"]
        and (a.get("namespace") or "") == (b.get("namespace") or "")
    )


def _section(ref: dict[str, Any]) -> str:
    return ref.get("sectionName") or ""


def _matches(rule: dict[str, Any]) -> list[dict[str, Any]]:
    # CRD default: one PathPrefix "/" match.
    return rule.get("matches", [{"path": {"type": "PathPrefix", "value": "/"}}])


def _prefix_rewrite(filters: list[dict[str, Any]], kind: str) -> bool:
    return sum(
        1 for f in filters
        if f.get(kind, {}).get("path", {}).get("type") == "ReplacePrefixMatch"
        and "replacePrefixMatch" in f[kind]["path"]
    ) == 1


def _one_prefix_match(rule: dict[str, Any]) -> bool:
    matches = _matches(rule)
    return len(matches) == 1 and matches[0].get("path", {}).get("type") == "PathPrefix"


def _backend_prefix_rewrite(rule: dict[str, Any], kind: str) -> bool:
    return sum(
        1 for b in rule.get("backendRefs", []) if _prefix_rewrite(b.get("filters", []), kind)
    ) == 1


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def _seconds(duration: str) -> float:
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION.findall(duration))


_PATH_CHARS = re.compile(r"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$")


def _exact_or_prefix(check: Callable[[str], bool]) -> Callable[[dict[str, Any]], bool]:
    def rule(path: dict[str, Any]) -> bool:
        if path.get("type", "PathPrefix") not in ("Exact", "PathPrefix"):
            return True
        return check(path.get("value", "/"))
    return rule


def _keda_advanced_modifiers_unset(keda: dict[str, Any]) -> bool:
    if "advanced" not in keda:
        return True
    modifiers = keda["advanced"].get("scalingModifiers", {})
    return not any(modifiers.get(k) for k in ("formula", "target", "activationTarget",
                                              "metricType"))


def _keda_hpa_name_unset(keda: dict[str, Any]) -> bool:
    advanced = keda.get("advanced", {})
    return not advanced.get("horizontalPodAutoscalerConfig", {}).get("name")


def _idle_needs_min(scaling: dict[str, Any]) -> bool:
    idle = scaling.get("wva", {}).get("keda", {}).get("idleReplicaCount")
    return idle is None or "minReplicas" in scaling


def _idle_below_min(scaling: dict[str, Any]) -> bool:
    idle = scaling.get("wva", {}).get("keda", {}).get("idleReplicaCount")
    return idle is None or "minReplicas" not in scaling or idle < scaling["minReplicas"]


_HTTPROUTE_PATH_RULES: dict[str, Callable[[str], bool]] = {
    "self.value.startsWith('/')": lambda v: v.startswith("/"),
    "!self.value.contains('//')": lambda v: "//" not in v,
    "!self.value.contains('/./')": lambda v: "/./" not in v,
    "!self.value.contains('/../')": lambda v: "/../" not in v,
    "!self.value.contains('%2f')": lambda v: "%2f" not in v,
    "!self.value.contains('%2F')": lambda v: "%2F" not in v,
    "!self.value.contains('#')": lambda v: "#" not in v,
    "!self.value.endsWith('/..')": lambda v: not v.endswith("/.."),
    "!self.value.endsWith('/.')": lambda v: not v.endswith("/."),
    "self.value.matches(r\"\"\"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$\"\"\")":
        lambda v: bool(_PATH_CHARS.match(v)),
}

IMPLEMENTED: dict[str, Callable[[Node], bool]] = {
    # InferencePool (and KServe's embedded pool spec).
    "self.kind != 'Service' || has(self.port)":
        lambda ref: ref.get("kind", "Service") != "Service" or "port" in ref,
    "self.all(p1, self.exists_one(p2, p1.number==p2.number))": _unique_port_numbers,
    # HTTPRoute.
    "self.all(p1, self.all(p2, p1.group == p2.group && p1.kind == p2.kind && p1.name == p2.name "
    "&& (((!has(p1.__namespace__) || p1.__namespace__ == '') && (!has(p2.__namespace__) || "
    "p2.__namespace__ == '')) || (has(p1.__namespace__) && has(p2.__namespace__) && "
    "p1.__namespace__ == p2.__namespace__ )) ? ((!has(p1.sectionName) || p1.sectionName == '') "
    "== (!has(p2.sectionName) || p2.sectionName == '')) : true))":
        lambda refs: all(
            not _same_parent(a, b) or (_section(a) == "") == (_section(b) == "")
            for a in refs for b in refs
        ),
    "self.all(p1, self.exists_one(p2, p1.group == p2.group && p1.kind == p2.kind && p1.name == "
    "p2.name && (((!has(p1.__namespace__) || p1.__namespace__ == '') && (!has(p2.__namespace__) "
    "|| p2.__namespace__ == '')) || (has(p1.__namespace__) && has(p2.__namespace__) && "
    "p1.__namespace__ == p2.__namespace__ )) && (((!has(p1.sectionName) || p1.sectionName == '') "
    "&& (!has(p2.sectionName) || p2.sectionName == '')) || (has(p1.sectionName) && "
    "has(p2.sectionName) && p1.sectionName == p2.sectionName))))":
        lambda refs: all(
            sum(1 for b in refs if _same_parent(a, b) and _section(a) == _section(b)) == 1
            for a in refs
        ),
    " + ".join(
        f"(self.size() > {i} ? self[{i}].matches.size() : 0)" for i in range(16)
    ) + " <= 128":
        lambda rules: sum(len(_matches(r)) for r in rules[:16]) <= 128,
    "(has(self.backendRefs) && size(self.backendRefs) > 0) ? (!has(self.filters) || "
    "self.filters.all(f, !has(f.requestRedirect))): true":
        lambda rule: not rule.get("backendRefs")
        or all("requestRedirect" not in f for f in rule.get("filters", [])),
    "(has(self.filters) && self.filters.exists_one(f, has(f.requestRedirect) && "
    "has(f.requestRedirect.path) && f.requestRedirect.path.type == 'ReplacePrefixMatch' && "
    "has(f.requestRedirect.path.replacePrefixMatch))) ? ((size(self.matches) != 1 || "
    "!has(self.matches[0].path) || self.matches[0].path.type != 'PathPrefix') ? false : true) "
    ": true":
        lambda rule: not _prefix_rewrite(rule.get("filters", []), "requestRedirect")
        or _one_prefix_match(rule),
    "(has(self.filters) && self.filters.exists_one(f, has(f.urlRewrite) && "
    "has(f.urlRewrite.path) && f.urlRewrite.path.type == 'ReplacePrefixMatch' && "
    "has(f.urlRewrite.path.replacePrefixMatch))) ? ((size(self.matches) != 1 || "
    "!has(self.matches[0].path) || self.matches[0].path.type != 'PathPrefix') ? false : true) "
    ": true":
        lambda rule: not _prefix_rewrite(rule.get("filters", []), "urlRewrite")
        or _one_prefix_match(rule),
    "(has(self.backendRefs) && self.backendRefs.exists_one(b, (has(b.filters) && "
    "b.filters.exists_one(f, has(f.requestRedirect) && has(f.requestRedirect.path) && "
    "f.requestRedirect.path.type == 'ReplacePrefixMatch' && "
    "has(f.requestRedirect.path.replacePrefixMatch))) )) ? ((size(self.matches) != 1 || "
    "!has(self.matches[0].path) || self.matches[0].path.type != 'PathPrefix') ? false : true) "
    ": true":
        lambda rule: not _backend_prefix_rewrite(rule, "requestRedirect")
        or _one_prefix_match(rule),
    "(has(self.backendRefs) && self.backendRefs.exists_one(b, (has(b.filters) && "
    "b.filters.exists_one(f, has(f.urlRewrite) && has(f.urlRewrite.path) && "
    "f.urlRewrite.path.type == 'ReplacePrefixMatch' && "
    "has(f.urlRewrite.path.replacePrefixMatch))) )) ? ((size(self.matches) != 1 || "
    "!has(self.matches[0].path) || self.matches[0].path.type != 'PathPrefix') ? false : true) "
    ": true":
        lambda rule: not _backend_prefix_rewrite(rule, "urlRewrite") or _one_prefix_match(rule),
    "(size(self.group) == 0 && self.kind == 'Service') ? has(self.port) : true":
        lambda ref: not (ref.get("group", "") == "" and ref.get("kind", "Service") == "Service")
        or "port" in ref,
    "self.type in ['Exact','PathPrefix'] || self.type == 'RegularExpression'":
        lambda path: path.get("type", "PathPrefix") in ("Exact", "PathPrefix",
                                                        "RegularExpression"),
    **{
        f"(self.type in ['Exact','PathPrefix']) ? {cel} : true": _exact_or_prefix(check)
        for cel, check in _HTTPROUTE_PATH_RULES.items()
    },
    "!(has(self.request) && has(self.backendRequest) && duration(self.request) != "
    "duration('0s') && duration(self.backendRequest) > duration(self.request))":
        lambda t: not ("request" in t and "backendRequest" in t
                       and _seconds(t["request"]) != 0
                       and _seconds(t["backendRequest"]) > _seconds(t["request"])),
    # LLMInferenceService.
    "!(has(self.replicas) && has(self.scaling))":
        lambda spec: not ("replicas" in spec and "scaling" in spec),
    "has(self.wva)": lambda scaling: "wva" in scaling,
    "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas":
        lambda s: "minReplicas" not in s or s["minReplicas"] <= s["maxReplicas"],
    "!has(self.wva) || !has(self.wva.keda) || !has(self.wva.keda.idleReplicaCount) || "
    "has(self.minReplicas)": _idle_needs_min,
    "!has(self.wva) || !has(self.wva.keda) || !has(self.wva.keda.idleReplicaCount) || "
    "!has(self.minReplicas) || self.wva.keda.idleReplicaCount < self.minReplicas":
        _idle_below_min,
    "!(has(self.hpa) && has(self.keda))": lambda wva: not ("hpa" in wva and "keda" in wva),
    "has(self.hpa) || has(self.keda)": lambda wva: "hpa" in wva or "keda" in wva,
    "!has(self.advanced) || (size(self.advanced.scalingModifiers.formula) == 0 && "
    "size(self.advanced.scalingModifiers.target) == 0 && "
    "size(self.advanced.scalingModifiers.activationTarget) == 0 && "
    "size(self.advanced.scalingModifiers.metricType) == 0)": _keda_advanced_modifiers_unset,
    "!has(self.advanced) || !has(self.advanced.horizontalPodAutoscalerConfig) || "
    "size(self.advanced.horizontalPodAutoscalerConfig.name) == 0": _keda_hpa_name_unset,
}


def cel_violations(resource: dict[str, Any]) -> list[str]:
    """The messages of the CEL rules the resource breaks ([] when it passes them all)."""
    broken: list[str] = []
    for rule in crd_rules(resource["kind"], resource["apiVersion"]):
        nodes = list(_nodes(resource, rule.path))
        if not nodes:
            continue
        check = IMPLEMENTED.get(rule.rule)
        if check is None:
            raise UnimplementedRule(
                f"{resource['kind']} {rule.path}: CEL rule not implemented: {rule.rule}"
            )
        broken.extend(f"{rule.path}: {rule.message}" for node in nodes if not check(node))
    return broken
