"""Refinery as an llm-d / Gateway API Inference Extension model server, and under KServe.

The chart's `inferencePool` objects and deploy/examples/{llm-d,kserve}.yaml: they lint and render
the same under Helm 3 and 4, pass strict Kubernetes validation and their published CRDs, obey
the CRDs' CEL rules (tests/deploy/cel_rules.py), and the endpoint picker's config is sound
(tests/deploy/endpoint_picker_config.py). No cluster: what the objects say is checked, not what a
Gateway does with them.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.cel_rules import UnimplementedRule, cel_violations
from tests.deploy.chart import (
    EXAMPLES,
    NAMESPACE,
    STACK_EXAMPLES,
    RenderError,
    find,
    pod_specs,
    render,
)
from tests.deploy.crd_validation import (
    CustomResourceInvalid,
    crd_schemas,
    validate_custom_resource,
)
from tests.deploy.endpoint_picker_config import endpoint_picker_config_errors
from tests.deploy.tools import REPO, run_tool

Manifests = list[dict[str, Any]]

EXAMPLE_DIR = REPO / "deploy" / "examples"
LLMD = EXAMPLE_DIR / "llm-d.yaml"
KSERVE = EXAMPLE_DIR / "kserve.yaml"
KUBERNETES_VERSIONS = ("1.27.0", "1.37.0")
NEW_KINDS = {"InferencePool", "InferenceObjective", "HTTPRoute"}
MULTI_NODE = ("inferencePool.enabled=true", "multiNode.enabled=true",
              "engine.tensorParallelSize=2", "gpu.count=1")
LWS_LEADER = {"leaderworkerset.sigs.k8s.io/worker-index": "0"}


@pytest.fixture(scope="module")
def llmd() -> Manifests:
    return render(LLMD)


@pytest.fixture(scope="module")
def multi_node() -> Manifests:
    return render(set_values=MULTI_NODE)


@pytest.fixture(scope="module")
def kserve() -> Manifests:
    return [doc for doc in yaml.safe_load_all(KSERVE.read_text()) if doc]


def _one(manifests: Manifests, kind: str) -> dict[str, Any]:
    (found,) = find(manifests, kind)
    return found


def _picker(manifests: Manifests) -> dict[str, Any]:
    (deployment,) = [m for m in find(manifests, "Deployment")
                     if m["metadata"]["labels"]["app.kubernetes.io/component"]
                     == "endpoint-picker"]
    return deployment


def _picker_config(manifests: Manifests) -> dict[str, Any]:
    (configmap,) = [m for m in find(manifests, "ConfigMap")
                    if m["metadata"]["name"].endswith("-epp")]
    return yaml.safe_load(configmap["data"]["config.yaml"])


# --- every example is covered; lint and render ------------------------------------------------

def test_every_example_file_is_tested_somewhere() -> None:
    names = {p.name for p in EXAMPLE_DIR.glob("*.yaml")}
    assert names == {p.name for p in EXAMPLES} | set(STACK_EXAMPLES)
    assert set(STACK_EXAMPLES) <= names


@pytest.mark.parametrize("helm", ["helm", "helm3"])
def test_chart_lints_clean_with_the_llmd_example(helm: str) -> None:
    done = run_tool(helm, "lint", "--strict", REPO / "deploy" / "helm" / "refinery",
                    "--values", LLMD)
    assert done.returncode == 0, done.stdout + done.stderr


def test_helm_3_and_4_render_the_same_inference_pool_objects(
    llmd: Manifests, multi_node: Manifests
) -> None:
    assert render(LLMD, helm="helm3") == llmd
    assert render(set_values=MULTI_NODE, helm="helm3") == multi_node


def test_nothing_of_it_renders_unless_enabled() -> None:
    manifests = render()
    assert not NEW_KINDS & {m["kind"] for m in manifests}
    assert not any("llm-d.ai/engine-type" in spec_labels for spec_labels in _pod_labels(manifests))
    assert len(find(manifests, "Deployment")) == 1


# --- schemas: Kubernetes, the published CRDs, their CEL rules -----------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_objects_pass_strict_kubernetes_validation(
    version: str, llmd: Manifests, multi_node: Manifests
) -> None:
    core = [m for m in llmd + multi_node if m["kind"] not in crd_schemas()]
    assert {"Role", "RoleBinding", "ConfigMap", "ServiceAccount"} <= {m["kind"] for m in core}
    for manifest in core:
        kubernetes_validate.validate(manifest, version, strict=True)


def test_custom_resources_match_their_published_crds(
    llmd: Manifests, multi_node: Manifests, kserve: Manifests
) -> None:
    legacy = render(LLMD, set_values=["inferencePool.objectives.apiGroup="
                                      "inference.networking.x-k8s.io"])
    checked: set[str] = set()
    for manifest in llmd + multi_node + legacy + kserve:
        if manifest["kind"] in crd_schemas():
            validate_custom_resource(manifest)
            checked.add(manifest["apiVersion"] + " " + manifest["kind"])
    assert checked >= {
        "inference.networking.k8s.io/v1 InferencePool",
        "llm-d.ai/v1alpha2 InferenceObjective",
        "inference.networking.x-k8s.io/v1alpha2 InferenceObjective",
        "gateway.networking.k8s.io/v1 HTTPRoute",
        "serving.kserve.io/v1alpha2 LLMInferenceService",
    }


@pytest.mark.parametrize(("kind", "path"), [
    ("InferencePool", ("spec", "endpointPickerRef")),
    ("InferenceObjective", ("spec", "poolRef")),
    ("HTTPRoute", ("spec", "rules", 0, "backendRefs", 0)),
    ("LLMInferenceService", ("spec", "template", "containers", 0)),
])
def test_crd_validation_rejects_unknown_fields(
    kind: str, path: tuple[Any, ...], llmd: Manifests, kserve: Manifests
) -> None:
    resource = copy.deepcopy(next(m for m in llmd + kserve if m["kind"] == kind))
    node = resource
    for step in path:
        node = node[step]
    node["bogusField"] = 1
    with pytest.raises(CustomResourceInvalid, match="bogusField"):
        validate_custom_resource(resource)


def test_objects_obey_the_crds_cel_rules(
    llmd: Manifests, multi_node: Manifests, kserve: Manifests
) -> None:
    kinds = NEW_KINDS | {"LLMInferenceService"}
    custom = [m for m in llmd + multi_node + kserve if m["kind"] in kinds]
    assert {m["kind"] for m in custom} == kinds
    for manifest in custom:
        assert cel_violations(manifest) == [], manifest["metadata"]["name"]


def _broken(resource: dict[str, Any], edit: Any) -> list[str]:
    resource = copy.deepcopy(resource)
    edit(resource["spec"])
    return cel_violations(resource)


def test_cel_rules_catch_what_the_api_server_would_refuse(
    llmd: Manifests, kserve: Manifests
) -> None:
    pool, route = _one(llmd, "InferencePool"), _one(llmd, "HTTPRoute")
    single, multi = kserve
    assert _broken(pool, lambda s: s["endpointPickerRef"].pop("port")) == [
        ".spec.endpointPickerRef: port is required when kind is 'Service' or unspecified "
        "(defaults to 'Service')"]
    assert _broken(pool, lambda s: s["endpointPickerRef"].pop("kind") and
                   s["endpointPickerRef"].pop("port"))  # kind defaults to Service
    assert _broken(pool, lambda s: s["targetPorts"].append({"number": 8000})) == [
        ".spec.targetPorts: port number must be unique"]
    assert _broken(route, lambda s: s["rules"][0]["matches"][0]["path"].update(value="v1//x"))
    assert _broken(route, lambda s: s["parentRefs"].append(dict(s["parentRefs"][0])))
    assert _broken(route, lambda s: s["rules"][0]["timeouts"].update(backendRequest="20m"))
    assert _broken(single, lambda s: s.update(scaling=multi["spec"]["scaling"])) == [
        ".spec: replicas and scaling are mutually exclusive; use scaling for autoscaled "
        "deployments or replicas for static deployments"]
    assert _broken(multi, lambda s: s["scaling"]["wva"].update(hpa={}))
    assert _broken(multi, lambda s: s["scaling"].update(minReplicas=3))


def test_a_rule_the_checker_cannot_evaluate_fails_loudly(llmd: Manifests) -> None:
    route = copy.deepcopy(_one(llmd, "HTTPRoute"))
    route["spec"]["rules"][0]["filters"] = [{"type": "CORS", "cors": {"allowOrigins": ["*"]}}]
    with pytest.raises(UnimplementedRule, match="not implemented"):
        cel_violations(route)


# --- the pool routes to the pods that serve HTTP -----------------------------------------------

def _pod_labels(manifests: Manifests) -> list[dict[str, str]]:
    labels = []
    for m in manifests:
        if m["kind"] == "Deployment":
            labels.append(m["spec"]["template"]["metadata"]["labels"])
        elif m["kind"] == "LeaderWorkerSet":
            template = m["spec"]["leaderWorkerTemplate"]
            labels.append(template["leaderTemplate"]["metadata"]["labels"])
            labels.append(template["workerTemplate"]["metadata"]["labels"])
    return labels


def test_pool_selects_the_server_pods_and_not_the_picker(llmd: Manifests) -> None:
    pool = _one(llmd, "InferencePool")
    selector = pool["spec"]["selector"]["matchLabels"].items()
    (server,) = [labels for labels in _pod_labels(llmd)
                 if labels["app.kubernetes.io/component"] == "server"]
    assert selector <= server.items()
    assert not selector <= _picker(llmd)["spec"]["template"]["metadata"]["labels"].items()
    assert server["llm-d.ai/engine-type"] == "vllm"
    (container,) = [c for role, spec in pod_specs(llmd) if role == "server"
                    for c in spec["containers"] if c["name"] == "refinery"]
    (http,) = container["ports"]
    assert pool["spec"]["targetPorts"] == [{"number": http["containerPort"]}]


def test_multi_node_pool_selects_group_leaders_only(multi_node: Manifests) -> None:
    pool = _one(multi_node, "InferencePool")
    selector = pool["spec"]["selector"]["matchLabels"]
    assert LWS_LEADER.items() <= selector.items()
    template = _one(multi_node, "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]
    leader = template["leaderTemplate"]["metadata"]["labels"]
    worker = template["workerTemplate"]["metadata"]["labels"]
    # The LWS controller adds the worker index to each pod: 0 for the leader.
    assert selector.items() <= {**leader, **LWS_LEADER}.items()
    second = {**worker, "leaderworkerset.sigs.k8s.io/worker-index": "1"}
    assert not selector.items() <= second.items()
    assert leader["llm-d.ai/engine-type"] == "vllm" and "llm-d.ai/engine-type" not in worker


def test_pool_points_at_the_picker_service(llmd: Manifests) -> None:
    ref = _one(llmd, "InferencePool")["spec"]["endpointPickerRef"]
    (service,) = [s for s in find(llmd, "Service") if s["metadata"]["name"] == ref["name"]]
    assert ref["kind"] == "Service" and ref["failureMode"] == "FailOpen"
    (grpc,) = [p for p in service["spec"]["ports"] if p["port"] == ref["port"]["number"]]
    assert grpc["appProtocol"] == "kubernetes.io/h2c"
    picker = _picker(llmd)
    assert service["spec"]["selector"].items() <= picker["spec"]["template"]["metadata"][
        "labels"].items()
    (epp,) = picker["spec"]["template"]["spec"]["containers"]
    assert grpc["targetPort"] in {p["name"] for p in epp["ports"]}
    args = epp["args"]
    assert args[args.index("--pool-name") + 1] == _one(llmd, "InferencePool")["metadata"]["name"]
    assert args[args.index("--pool-namespace") + 1] == NAMESPACE
    assert args[args.index("--config-file") + 1] == "/config/config.yaml"
    assert re.fullmatch(r"ghcr\.io/llm-d/llm-d-router-endpoint-picker:v\d+\.\d+\.\d+", epp["image"])


def test_picker_rbac_reads_pods_pools_and_objectives_in_both_groups(llmd: Manifests) -> None:
    role, binding = _one(llmd, "Role"), _one(llmd, "RoleBinding")
    grants = {(group, resource): set(rule["verbs"])
              for rule in role["rules"] for group in rule["apiGroups"]
              for resource in rule["resources"]}
    read = {"get", "list", "watch"}
    for key in [("", "pods"), ("inference.networking.k8s.io", "inferencepools"),
                ("llm-d.ai", "inferenceobjectives"),
                ("inference.networking.x-k8s.io", "inferenceobjectives")]:
        assert grants[key] == read, key
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    (subject,) = binding["subjects"]
    assert subject["name"] == _picker(llmd)["spec"]["template"]["spec"]["serviceAccountName"]
    ha = render(LLMD, set_values=["inferencePool.endpointPicker.replicas=2"])
    assert any("leases" in rule["resources"] for rule in _one(ha, "Role")["rules"])
    (epp,) = _picker(ha)["spec"]["template"]["spec"]["containers"]
    assert "--ha-enable-leader-election" in epp["args"]


# --- scoring, priorities, route ---------------------------------------------------------------

def test_picker_scores_on_server_reported_load_and_prefix_locality(llmd: Manifests) -> None:
    config = _picker_config(llmd)
    assert endpoint_picker_config_errors(config) == []
    (profile,) = config["schedulingProfiles"]
    weights = {p["pluginRef"]: p.get("weight") for p in profile["plugins"]}
    assert weights == {"queue-scorer": 2, "kv-cache-utilization-scorer": 2,
                       "prefix-cache-scorer": 3, "max-score-picker": None}
    # In-flight scorers count one routed request per strategy call: none are used.
    assert not {"token-load-scorer", "active-request-scorer"} & {p["type"] for p in
                                                                 config["plugins"]}
    assert config["featureGates"] == ["flowControl"]
    tuned = _picker_config(render(LLMD, set_values=[
        "inferencePool.endpointPicker.scorers.prefixCache=5",
        "inferencePool.endpointPicker.flowControl=false"]))
    assert {"pluginRef": "prefix-cache-scorer", "weight": 5} in tuned["schedulingProfiles"][0][
        "plugins"]
    assert "featureGates" not in tuned


@pytest.mark.parametrize(("edit", "error"), [
    (lambda c: c["schedulingProfiles"][0]["plugins"].append({"pluginRef": "nope"}),
     "names no declared plugin"),
    (lambda c: c["schedulingProfiles"][0]["plugins"][-1].update(weight=1),
     "not a scorer"),
    (lambda c: c["schedulingProfiles"][0]["plugins"][0].update(weight=0), "positive"),
    (lambda c: c.update(apiVersion="llm-d.ai/v9"), "unknown apiVersion"),
    (lambda c: c.update(apiVersion="inference.networking.x-k8s.io/v1alpha1"), "deprecated"),
    (lambda c: c["plugins"].append({"type": "queue-scorer"}), "duplicate plugin name"),
    (lambda c: c["plugins"].append({"type": "magic-scorer"}), "unknown plugin type"),
    (lambda c: c["dataLayer"]["sources"][0].update(pluginRef="gone"), "names no declared"),
    (lambda c: c.update(featureGates=["warpDrive"]), "unknown feature gate"),
])
def test_picker_config_check_finds_what_the_picker_would_refuse(
    edit: Any, error: str, llmd: Manifests
) -> None:
    config = copy.deepcopy(_picker_config(llmd))
    edit(config)
    assert any(error in e for e in endpoint_picker_config_errors(config))


def test_objectives_let_clients_lower_strategy_traffic(llmd: Manifests) -> None:
    objectives = {o["metadata"]["name"]: o for o in find(llmd, "InferenceObjective")}
    assert objectives["strategy-batch"]["spec"]["priority"] < 0  # no header: priority 0
    assert objectives["interactive"]["spec"]["priority"] > 0
    pool = _one(llmd, "InferencePool")["metadata"]["name"]
    for objective in objectives.values():
        assert objective["apiVersion"] == "llm-d.ai/v1alpha2"
        assert objective["spec"]["poolRef"] == {
            "group": "inference.networking.k8s.io", "kind": "InferencePool", "name": pool}
    legacy = render(LLMD, set_values=["inferencePool.objectives.apiGroup="
                                      "inference.networking.x-k8s.io"])
    assert {o["apiVersion"] for o in find(legacy, "InferenceObjective")} == {
        "inference.networking.x-k8s.io/v1alpha2"}


def test_route_sends_the_gateways_traffic_to_the_pool(llmd: Manifests) -> None:
    route = _one(llmd, "HTTPRoute")
    (parent,) = route["spec"]["parentRefs"]
    assert parent == {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                      "name": "inference-gateway"}
    (rule,) = route["spec"]["rules"]
    assert rule["backendRefs"] == [{"group": "inference.networking.k8s.io",
                                    "kind": "InferencePool",
                                    "name": _one(llmd, "InferencePool")["metadata"]["name"]}]
    assert rule["timeouts"] == {"request": "600s"}
    moved = _one(render(LLMD, set_values=[
        "inferencePool.httpRoute.gateway.namespace=gateways",
        "inferencePool.httpRoute.gateway.sectionName=https"]), "HTTPRoute")
    assert moved["spec"]["parentRefs"][0] | {"namespace": "gateways", "sectionName": "https"} \
        == moved["spec"]["parentRefs"][0]
    without = render(LLMD, set_values=["inferencePool.httpRoute.enabled=false"])
    assert find(without, "HTTPRoute") == [] and find(without, "InferencePool")


@pytest.mark.parametrize(("assignment", "message"), [
    ("inferencePool.objectives.apiGroup=inference.networking.k8s.io", "apiGroup"),
    ("inferencePool.failureMode=Never", "failureMode"),
    ("inferencePool.endpointPicker.scorers.queue=0", "queue"),
    ("inferencePool.httpRoute.pathPrefix=v1", "pathPrefix"),
])
def test_chart_refuses_bad_inference_pool_values(assignment: str, message: str) -> None:
    with pytest.raises(RenderError, match=message):
        render(set_values=["inferencePool.enabled=true", assignment])


def test_docs_describe_each_stack() -> None:
    text = (REPO / "docs" / "deploy.md").read_text()
    for heading in ("llm-d", "KServe", "production-stack"):
        assert re.search(rf"^##+ .*{re.escape(heading)}", text, re.M), heading
    assert "--routing-logic session" in text
    assert Path(LLMD).name in text and Path(KSERVE).name in text
