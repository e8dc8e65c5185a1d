"""The rendered chart behaves as docs/deploy.md says: probes, drain, pod security, models and
secrets, scaling, multi-node, monitoring.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.chart import (
    CHART,
    EXAMPLE_IDS,
    EXAMPLES,
    NAMESPACE,
    VALUES,
    env_of,
    example_values,
    find,
    pod_specs,
    render,
    server_container,
)
from tests.deploy.tools import REPO

Manifests = list[dict[str, Any]]


# --- pods ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("example", EXAMPLE_IDS)
def test_probes_gate_traffic_on_ready_within_the_model_load_budget(
    example: str, examples: dict[str, Manifests]
) -> None:
    container = server_container(examples[example])
    budget = example_values(example).get("probes", {}).get("startup", {}).get(
        "modelLoadBudgetSeconds", VALUES["probes"]["startup"]["modelLoadBudgetSeconds"]
    )
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/ready", "port": "http"}
    assert startup["failureThreshold"] * startup["periodSeconds"] >= budget
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert {"name": "http", "containerPort": 8000, "protocol": "TCP"} in container["ports"]


@pytest.mark.parametrize("example", EXAMPLE_IDS)
def test_grace_period_covers_prestop_drain_and_engine_shutdown(
    example: str, examples: dict[str, Manifests]
) -> None:
    manifests = examples[example]
    container = server_container(manifests)
    drain = float(env_of(container)["REFINERY_DRAIN_TIMEOUT"])
    assert drain == example_values(example).get("refinery", {}).get(
        "drainTimeoutSeconds", VALUES["refinery"]["drainTimeoutSeconds"]
    )
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    for _, spec in pod_specs(manifests):
        grace = spec["terminationGracePeriodSeconds"]
        assert grace == int(sleep[1]) + drain + VALUES["shutdown"]["engineShutdownSeconds"]


@pytest.mark.parametrize("example", EXAMPLE_IDS)
def test_pods_meet_the_restricted_pod_security_standard(
    example: str, examples: dict[str, Manifests]
) -> None:
    for _, spec in pod_specs(examples[example]):
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
        assert not any("hostPath" in volume for volume in spec["volumes"])
        assert spec["automountServiceAccountToken"] is False
        # Service links would inject REFINERY_PORT=tcp://… into Refinery's settings.
        assert spec["enableServiceLinks"] is False
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert not context.get("privileged")


def test_gpu_pods_request_their_gpus_and_shared_memory(examples: dict[str, Manifests]) -> None:
    for example, gpus in [("gpu-single", 1), ("multi-node", 8)]:
        for _, spec in pod_specs(examples[example]):
            (container,) = spec["containers"]
            assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus
            shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
            assert shm["emptyDir"]["medium"] == "Memory"
            assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    cpu = server_container(examples["cpu-embedded"])
    assert not any("gpu" in key for key in cpu["resources"].get("limits", {}))
    assert env_of(cpu)["VLLM_CPU_KVCACHE_SPACE"] == "1"


@pytest.mark.parametrize(
    ("assignments", "model_arg", "offline"),
    [
        ([], None, "1"),
        (["model.source=hub", "model.name=Qwen/Qwen2.5-7B-Instruct", "model.revision=main"],
         "Qwen/Qwen2.5-7B-Instruct", "0"),
        (["model.source=pvc", "model.pvc.claimName=weights", "model.pvc.path=qwen/"],
         "/models/qwen", "1"),
    ],
    ids=["embedded", "hub", "pvc"],
)
def test_model_comes_from_the_image_the_hub_or_a_claim(
    assignments: list[str], model_arg: str | None, offline: str
) -> None:
    manifests = render(set_values=assignments)
    container = server_container(manifests)
    args = container.get("args", [])
    if model_arg is None:
        assert not args or args[0].startswith("--")
    else:
        assert args[0] == model_arg
    assert env_of(container)["HF_HUB_OFFLINE"] == offline
    (spec,) = [s for _, s in pod_specs(manifests)]
    claims = [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
    if model_arg == "/models/qwen":
        assert claims == [{"name": "models", "persistentVolumeClaim":
                           {"claimName": "weights", "readOnly": True}}]
        assert {"name": "models", "mountPath": "/models", "readOnly": True} in container[
            "volumeMounts"]
    else:
        assert claims == []


def _api_keys_file_of(manifests: Manifests) -> tuple[str, str]:
    """(the Secret mounted as the API keys file, REFINERY_API_KEYS_FILE): the keys are a
    read-only file from the Secret, never an environment variable."""
    container = server_container(manifests)
    env = env_of(container)
    assert "REFINERY_API_KEYS" not in env
    (spec,) = [s for role, s in pod_specs(manifests) if role in ("server", "leader")]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "api-keys"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "api-keys"]
    assert mount["readOnly"] is True
    (item,) = volume["secret"]["items"]
    assert env["REFINERY_API_KEYS_FILE"] == f"{mount['mountPath']}/{item['path']}"
    return volume["secret"]["secretName"], env["REFINERY_API_KEYS_FILE"]


def test_hub_token_and_api_keys_come_from_secrets(examples: dict[str, Manifests]) -> None:
    env = env_of(server_container(examples["gpu-single"]))
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}
    assert _api_keys_file_of(examples["gpu-single"]) == (
        "refinery-api-keys", "/etc/refinery/api-keys/api-keys")
    # An existing Secret is used as it is; the chart creates none.
    assert find(examples["gpu-single"], "Secret") == []


def test_chart_managed_api_keys_go_into_a_secret_of_its_own(all_features: Manifests) -> None:
    (secret,) = find(all_features, "Secret")
    assert secret["stringData"] == {"api-keys": "key-one,key-two"}
    assert _api_keys_file_of(all_features)[0] == secret["metadata"]["name"]
    # Without keys there is nothing to mount and nothing to require.
    plain = render()
    assert "REFINERY_API_KEYS_FILE" not in env_of(server_container(plain))
    assert all(v["name"] != "api-keys" for _, spec in pod_specs(plain) for v in spec["volumes"])


def test_admission_settings_reach_the_server() -> None:
    env = env_of(server_container(render()))
    assert env["REFINERY_QUEUE_FACTOR"] == "2"
    assert env["REFINERY_REQUEST_TIMEOUT"] == "600"
    assert "REFINERY_MAX_OUTSTANDING_SEQUENCES" not in env  # derived from max-num-seqs
    env = env_of(server_container(render(set_values=[
        "refinery.admission.maxOutstandingSequences=96", "refinery.requestTimeoutSeconds=120"])))
    assert env["REFINERY_MAX_OUTSTANDING_SEQUENCES"] == "96"
    assert env["REFINERY_REQUEST_TIMEOUT"] == "120"


def test_engine_args_become_vllm_flags() -> None:
    manifests = render(set_values=[
        "engine.args.max-model-len=1000000",
        "engine.args.gpu-memory-utilization=0.85",
        "engine.args.enforce-eager=true",
        "engine.args.enable-prefix-caching=false",
        "engine.args.served-model-name={a,b}",
        "engine.extraArgs={--seed,7}",
        "engine.tensorParallelSize=2",
        "gpu.count=2",
    ])
    args = server_container(manifests)["args"]
    joined = " ".join(args)
    assert "--tensor-parallel-size 2" in joined
    assert "--max-model-len 1000000" in joined
    assert "--gpu-memory-utilization 0.85" in joined
    assert "--enforce-eager" in args
    assert "--no-enable-prefix-caching" in args
    assert "--served-model-name a b" in joined
    assert args[-2:] == ["--seed", "7"]


# --- traffic, scaling, disruption ---------------------------------------------------------------

def test_service_sends_traffic_to_servers_and_leaders_only(examples: dict[str, Manifests]) -> None:
    for manifests in examples.values():
        (service,) = find(manifests, "Service")
        selector = service["spec"]["selector"].items()
        for role, spec_owner in _pod_labels(manifests):
            assert (selector <= spec_owner.items()) == (role != "worker"), role


def _pod_labels(manifests: Manifests) -> list[tuple[str, dict[str, str]]]:
    labels = []
    for m in manifests:
        if m["kind"] == "Deployment":
            labels.append(("server", m["spec"]["template"]["metadata"]["labels"]))
        elif m["kind"] == "LeaderWorkerSet":
            template = m["spec"]["leaderWorkerTemplate"]
            labels.append(("leader", template["leaderTemplate"]["metadata"]["labels"]))
            labels.append(("worker", template["workerTemplate"]["metadata"]["labels"]))
    return labels


@pytest.mark.parametrize(("backend", "kind", "other"), [
    ("keda", "ScaledObject", "HorizontalPodAutoscaler"),
    ("hpa", "HorizontalPodAutoscaler", "ScaledObject"),
])
@pytest.mark.parametrize("multi_node", [False, True])
def test_autoscaling_backends_switch_and_own_the_replica_count(
    backend: str, kind: str, other: str, multi_node: bool
) -> None:
    extra = ["multiNode.enabled=true", "gpu.count=2", "engine.tensorParallelSize=4"]
    manifests = render(set_values=[
        "autoscaling.enabled=true", f"autoscaling.backend={backend}",
        *(extra if multi_node else []),
    ])
    (scaler,) = find(manifests, kind)
    assert find(manifests, other) == []
    (workload,) = find(manifests, "LeaderWorkerSet" if multi_node else "Deployment")
    assert "replicas" not in workload["spec"], "the autoscaler owns the replica count"
    assert scaler["spec"]["scaleTargetRef"] == {
        "apiVersion": workload["apiVersion"], "kind": workload["kind"],
        "name": workload["metadata"]["name"],
    }
    if kind == "ScaledObject":
        (trigger,) = scaler["spec"]["triggers"]
        assert trigger["metadata"]["query"] == (
            f'sum(vllm:num_requests_waiting{{namespace="{NAMESPACE}",service="refinery"}})'
        )
        assert trigger["metricType"] == "AverageValue"
    fixed = render(set_values=[*(extra if multi_node else [])])
    assert find(fixed, kind) == []
    assert find(fixed, workload["kind"])[0]["spec"]["replicas"] == 1


def test_hpa_reads_the_metric_prometheus_adapter_serves() -> None:
    adapter = yaml.safe_load(
        (REPO / "deploy" / "monitoring" / "prometheus-adapter-values.yaml").read_text()
    )
    served = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    assert VALUES["autoscaling"]["hpa"]["metricName"] in served
    assert VALUES["autoscaling"]["hpa"]["admissionMetricName"] in served
    for metric in ("queueDepth", "admission"):
        manifests = render(set_values=["autoscaling.enabled=true", "autoscaling.backend=hpa",
                                       f"autoscaling.metric={metric}"])
        (hpa,) = find(manifests, "HorizontalPodAutoscaler")
        assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] in served


@pytest.mark.parametrize("backend", ["keda", "hpa"])
def test_autoscaling_can_follow_the_admission_load(backend: str) -> None:
    manifests = render(set_values=["autoscaling.enabled=true", f"autoscaling.backend={backend}",
                                   "autoscaling.metric=admission"])
    if backend == "keda":
        (scaler,) = find(manifests, "ScaledObject")
        (trigger,) = scaler["spec"]["triggers"]
        selector = f'namespace="{NAMESPACE}",service="refinery"'
        assert trigger["metadata"]["query"] == (
            f"sum(refinery_outstanding_sequences{{{selector}}}) / "
            f"clamp_min(max(refinery_outstanding_sequences_limit{{{selector}}}), 1)"
        )
        assert trigger["metadata"]["threshold"] == "0.7"
    else:
        (hpa,) = find(manifests, "HorizontalPodAutoscaler")
        metric = hpa["spec"]["metrics"][0]["pods"]
        assert metric["metric"]["name"] == "refinery_admission_utilization"
        assert metric["target"]["averageValue"] == "0.7"


def test_network_policy_opens_the_api_port_and_group_traffic(
    examples: dict[str, Manifests],
) -> None:
    (single,) = find(examples["gpu-single"], "NetworkPolicy")
    (api_rule,) = single["spec"]["ingress"]
    assert api_rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert len(api_rule["from"]) == 2
    multi = find(render(EXAMPLES[EXAMPLE_IDS.index("multi-node")],
                        set_values=["networkPolicy.enabled=true"]), "NetworkPolicy")[0]
    assert len(multi["spec"]["ingress"]) == 2
    group_rule = multi["spec"]["ingress"][1]
    assert "ports" not in group_rule
    assert group_rule["from"][0]["podSelector"]["matchLabels"] == multi["spec"]["podSelector"][
        "matchLabels"]


def test_disruption_budget_covers_every_pod_of_the_release(
    examples: dict[str, Manifests],
) -> None:
    (pdb,) = find(examples["multi-node"], "PodDisruptionBudget")
    selector = pdb["spec"]["selector"]["matchLabels"].items()
    assert all(selector <= labels.items() for _, labels in _pod_labels(examples["multi-node"]))
    assert pdb["spec"]["maxUnavailable"] == 1


# --- multi-node -------------------------------------------------------------------------------

def test_multi_node_follows_vllms_ray_recipe_on_a_leaderworkerset(
    examples: dict[str, Manifests],
) -> None:
    values = example_values("multi-node")
    (lws,) = find(examples["multi-node"], "LeaderWorkerSet")
    assert find(examples["multi-node"], "Deployment") == []
    template = lws["spec"]["leaderWorkerTemplate"]
    assert template["size"] == values["multiNode"]["nodes"]
    assert template["restartPolicy"] == "RecreateGroupOnPodRestart"
    (leader,) = template["leaderTemplate"]["spec"]["containers"]
    (worker,) = template["workerTemplate"]["spec"]["containers"]
    script = VALUES["multiNode"]["rayScript"]
    assert leader["command"][:2] == ["bash", "-c"]
    assert f"bash '{script}' leader" in leader["command"][2]
    assert '--ray_cluster_size="${LWS_GROUP_SIZE}"' in leader["command"][2]
    assert leader["command"][2].endswith('&& exec refinery serve "$@"')
    args = " ".join(leader["args"])
    assert "--tensor-parallel-size 8" in args and "--pipeline-parallel-size 2" in args
    assert "--distributed-executor-backend ray" in args
    assert f"bash '{script}' worker" in worker["command"][2]
    assert '--ray_address="${LWS_LEADER_ADDRESS}"' in worker["command"][2]
    assert "ports" not in worker and "readinessProbe" not in worker
    # Every rank loads its shard: workers see the same model volume and environment.
    assert worker["volumeMounts"] == leader["volumeMounts"]
    assert worker["env"] == leader["env"]


# --- monitoring objects ---------------------------------------------------------------------------

def test_alerts_cover_errors_queue_latency_and_readiness(all_features: Manifests) -> None:
    (rule,) = find(all_features, "PrometheusRule")
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert {
        "RefineryHighErrorRate", "RefineryQueueSaturated", "RefineryHighLatencyP95",
        "RefineryEngineNotReady", "RefineryTargetDown", "RefineryKVCacheNearlyFull",
    } <= alerts.keys()
    for alert in alerts.values():
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
        assert f'namespace="{NAMESPACE}",service="refinery"' in alert["expr"]
    # Probes and scrapes (/ready answers 503 while loading) are not API errors.
    assert 'endpoint=~"/v1/.*"' in alerts["RefineryHighErrorRate"]["expr"]


def test_dashboard_configmap_is_found_by_grafanas_sidecar(all_features: Manifests) -> None:
    (configmap,) = [m for m in find(all_features, "ConfigMap")
                    if m["metadata"]["name"].endswith("-dashboard")]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["refinery.json"])
    assert dashboard["uid"] == "refinery"
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"] and all(t["expr"] for t in panel["targets"])
    assert json.loads((CHART / "dashboards" / "refinery.json").read_text()) == dashboard


def test_service_monitor_scrapes_the_api_port(all_features: Manifests) -> None:
    (monitor,) = find(all_features, "ServiceMonitor")
    (service,) = find(all_features, "Service")
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"][
        "labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}

def _seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", duration))


@pytest.mark.parametrize("example", EXAMPLES, ids=EXAMPLE_IDS)
def test_engine_not_ready_alert_fires_before_the_startup_probe_restarts_the_pod(
    example: Path,
) -> None:
    manifests = render(example, set_values=["metrics.prometheusRule.enabled=true"])
    (rule,) = find(manifests, "PrometheusRule")
    (alert,) = [r for g in rule["spec"]["groups"] for r in g["rules"]
                if r["alert"] == "RefineryEngineNotReady"]
    container = server_container(manifests)
    startup = container["startupProbe"]
    assert _seconds(alert["for"]) < startup["failureThreshold"] * startup["periodSeconds"]
