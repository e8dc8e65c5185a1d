"""`mode: gateway`: the chart renders a Refinery Deployment with no engine (no GPU, no model
volume, small resources) pointed at a backend Service, and refuses values that make no sense
in that mode."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.chart import RenderError, env_of, find, render, server_container

BACKEND = "http://vllm.inference.svc.cluster.local:8000/v1"
GATEWAY = ("mode=gateway", f"gateway.backend={BACKEND}")


@pytest.fixture(scope="module")
def gateway() -> list[dict[str, Any]]:
    return render(set_values=(*GATEWAY, "gateway.apiKey.secretName=vllm-key",
                              "gateway.sessionHeader=x-affinity",
                              "gateway.backendKind=openai"))


def test_the_gateway_pod_points_at_the_backend(gateway: list[dict[str, Any]]) -> None:
    env = env_of(server_container(gateway))
    assert env["REFINERY_BACKEND"] == BACKEND
    assert env["REFINERY_BACKEND_SESSION_HEADER"] == "x-affinity"
    assert env["REFINERY_BACKEND_TIMEOUT"] == "600"
    assert env["REFINERY_BACKEND_PRIORITY"] == "true"
    assert env["REFINERY_BACKEND_KIND"] == "openai"
    assert env["REFINERY_BACKEND_API_KEY"] == {
        "secretKeyRef": {"name": "vllm-key", "key": "api-key"}}


def test_the_gateway_pod_has_no_engine_resources(gateway: list[dict[str, Any]]) -> None:
    container = server_container(gateway)
    assert container["resources"] == {"requests": {"cpu": "1", "memory": "1Gi"},
                                      "limits": {"memory": "2Gi"}}
    (deployment,) = find(gateway, "Deployment")
    volumes = {v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "dshm" not in volumes and "models" not in volumes
    # It still drains, probes /ready (the backend's health) and serves on the same port.
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert find(gateway, "Service")


def test_the_gateway_detects_its_backend_kind_by_default() -> None:
    env = env_of(server_container(render(set_values=GATEWAY)))
    assert env["REFINERY_BACKEND_KIND"] == "auto"


def test_server_mode_is_unchanged_by_the_gateway_values() -> None:
    env = env_of(server_container(render()))
    assert not [name for name in env if name.startswith("REFINERY_BACKEND")]


def test_the_gateway_render_passes_strict_kubernetes_validation(
        gateway: list[dict[str, Any]]) -> None:
    for manifest in gateway:  # the defaults render core objects only
        kubernetes_validate.validate(manifest, "1.37.0", strict=True)


@pytest.mark.parametrize(("values", "message"), [
    (("mode=gateway",), "gateway.backend"),
    (("mode=gateway", "gateway.backend=vllm:8000"), "/gateway/backend"),
    ((*GATEWAY, "model.source=hub", "model.name=Qwen/Qwen2.5-7B-Instruct"), "loads no model"),
    ((*GATEWAY, "multiNode.enabled=true"), "/multiNode/enabled"),
    (("mode=proxy",), "mode"),
    ((*GATEWAY, "gateway.backendKind=vllm"), "/gateway/backendKind"),
])
def test_the_chart_refuses_gateway_values_that_cannot_work(values: tuple[str, ...],
                                                           message: str) -> None:
    with pytest.raises(RenderError, match=message):
        render(set_values=values)
