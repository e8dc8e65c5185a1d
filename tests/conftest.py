"""Test-wide settings and the live server every end-to-end test shares.

Never reach a model hub; keep vLLM's CPU KV cache small. The session server (real vLLM engine,
embedded model) starts on first use, by tests/e2e or tests/deploy, and once per run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from tests.servers import ServerProcess, running, start_refinery

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache for the whole session: the embedded model is converted once, for real."""
    return tmp_path_factory.mktemp("refinery-cache")


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def server(cache_dir: Path, logs_dir: Path) -> Iterator[ServerProcess]:
    """`refinery serve` with no model argument: the embedded SmolLM2, no API key."""
    with running(start_refinery(logs_dir, env={"REFINERY_CACHE": str(cache_dir)})) as live:
        yield live


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> OpenAI:
    return OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def embedded_model_dir(server: ServerProcess, cache_dir: Path) -> Path:
    """The converted folder the session server serves (already built by it)."""
    from server.embedded_model import ensure_embedded_model

    return ensure_embedded_model(cache_dir)
