"""Fixtures for the deployment checks: rendered chart manifests. The metric-name test uses
the session's live server (`server`, tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.chart import ALL_FEATURES, EXAMPLES, render

Manifests = list[dict[str, Any]]


@pytest.fixture(scope="session")
def examples() -> dict[str, Manifests]:
    """deploy/examples/*.yaml, each rendered once: file stem → manifests."""
    return {path.stem: render(path) for path in EXAMPLES}


@pytest.fixture(scope="session")
def all_features() -> Manifests:
    """The chart's defaults with every optional object switched on."""
    return render(set_values=ALL_FEATURES)
