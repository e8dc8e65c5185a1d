"""deploy/examples/kserve.yaml: two KServe LLMInferenceServices that run `refinery serve` in
place of KServe's default `vllm serve` (their CRD and CEL checks live in test_inference_pool.py,
with the chart's other custom resources)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.deploy.chart import EXAMPLES
from tests.deploy.endpoint_picker_config import endpoint_picker_config_errors
from tests.deploy.tools import REPO

KSERVE = REPO / "deploy" / "examples" / "kserve.yaml"


@pytest.fixture(scope="module")
def kserve() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(KSERVE.read_text()) if doc]


def test_kserve_example_runs_refinery_in_place_of_vllm_serve(kserve: list[dict[str, Any]]) -> None:
    single, multi = kserve
    (main,) = single["spec"]["template"]["containers"]
    assert main["name"] == "main" and main["command"] == ["refinery", "serve"]
    assert main["args"][0] == "/mnt/models"
    assert main["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert main["livenessProbe"]["httpGet"]["path"] == "/health"
    config = single["spec"]["router"]["scheduler"]["config"]["inline"]
    assert endpoint_picker_config_errors(config) == []
    assert {"gateway", "route", "scheduler"} <= single["spec"]["router"].keys()
    assert "replicas" in single["spec"] and "scaling" not in single["spec"]
    assert multi["spec"]["scaling"]["wva"]["keda"] and "replicas" not in multi["spec"]
    (leader,) = multi["spec"]["template"]["containers"]
    (worker,) = multi["spec"]["worker"]["containers"]
    assert leader["command"][2].endswith('exec refinery serve "$@"')
    assert "worker" in worker["command"][2]
    parallel = multi["spec"]["parallelism"]
    joined = " ".join(leader["args"])
    assert f"--tensor-parallel-size {parallel['tensor']}" in joined
    assert f"--pipeline-parallel-size {parallel['pipeline']}" in joined


@pytest.mark.parametrize("document", [0, 1])
def test_kserve_example_arguments_parse_as_refinery_serve(
    document: int, kserve: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.cli import resolve_serve_args

    for variable in ("REFINERY_PORT", "REFINERY_SERVED_MODEL_NAME", "REFINERY_MODEL"):
        monkeypatch.delenv(variable, raising=False)
    (main,) = kserve[document]["spec"]["template"]["containers"]
    settings, args = resolve_serve_args(main["args"])
    name = kserve[document]["spec"]["model"]["name"]
    assert (settings.model, settings.port, settings.served_model_name) == (
        "/mnt/models", 8000, name)
    assert args.served_model_name == [name]


def test_kserve_example_is_a_manifest_not_chart_values() -> None:
    assert all(p.name != "kserve.yaml" for p in EXAMPLES)
    for doc in yaml.safe_load_all(KSERVE.read_text()):
        assert doc["apiVersion"] == "serving.kserve.io/v1alpha2"
        assert doc["kind"] == "LLMInferenceService"
