"""The deploy tree's static YAML is yamllint-clean, and the helm binaries are the pinned ones."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from tests.deploy.tools import REPO, run_tool, tool

CONFIG = REPO / "deploy" / ".yamllint"


def test_static_yaml_is_yamllint_clean() -> None:
    done = run_tool("yamllint", "--strict", "-c", CONFIG, "deploy/")
    assert done.returncode == 0, done.stdout + done.stderr


def test_yamllint_covers_chart_values_and_examples() -> None:
    listed = set(run_tool("yamllint", "-c", CONFIG, "--list-files", "deploy/").stdout.split())
    expected = {
        "deploy/helm/refinery/Chart.yaml",
        "deploy/helm/refinery/values.yaml",
        "deploy/monitoring/prometheus-adapter-values.yaml",
        *(str(p.relative_to(REPO)) for p in (REPO / "deploy" / "examples").glob("*.yaml")),
    }
    assert expected <= listed
    # Go templates are not YAML; vendored CRDs are upstream's bytes.
    assert not any("/templates/" in path for path in listed)


def test_yamllint_config_catches_a_sloppy_file(tmp_path: Path) -> None:
    sloppy = tmp_path / "values.yaml"
    sloppy.write_text("image:\n    repository: refinery   \n  tag: x\nimage: twice\n")
    done = run_tool("yamllint", "-c", CONFIG, sloppy)
    assert done.returncode != 0
    assert "trailing-spaces" in done.stdout or "syntax" in done.stdout


def _installer() -> ModuleType:
    """deploy/tools/install_helm.py, imported by path (deploy/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "refinery_install_helm", REPO / "deploy" / "tools" / "install_helm.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_helm_binaries_are_the_pinned_releases() -> None:
    for binary in _installer().HELM_BINARIES:
        path = tool(binary.name)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == binary.binary_sha256, path
        done = run_tool(binary.name, "version", "--short")
        assert done.stdout.startswith(binary.version), done.stdout
