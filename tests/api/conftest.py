"""The real app, in process, on a stub engine: no vLLM engine loads (httpx's ASGITransport does
not run the lifespan), so each test here takes milliseconds."""

from __future__ import annotations

from argparse import Namespace
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from server.app import create_app
from server.settings import Settings
from tests.api.asgi_client import AppFactory, client_for
from tests.api.stub_engine import StubEngine


@pytest.fixture(autouse=True)
def no_dsc_history() -> None:
    """DSC remembers earlier requests of a family (a process-wide LRU): each test starts with
    none, so a scripted test never depends on what an earlier one (or a fuzz example) left."""
    from strategies import dsc

    dsc.GROUPS.clear()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # FakeSampler runs its samples as asyncio tasks


@pytest.fixture
def stub() -> StubEngine:
    return StubEngine()


@pytest.fixture
def make_app(stub: StubEngine) -> AppFactory:
    """The app with `stub` as its engine, marked ready; keywords are `Settings` fields."""

    def make(*, ready: bool = True, **settings: Any) -> FastAPI:
        # What the tests rely on is set here, never read from a REFINERY_* environment.
        defaults = {"api_keys": [], "max_samples": 64, "strategy_keepalive": 5.0}
        app = create_app(Settings(**{**defaults, **settings}), Namespace(model=None))
        if ready:
            app.state.engine = stub
            app.state.lifecycle.mark_ready()
        return app

    return make


@pytest.fixture
async def client(make_app: AppFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(make_app()) as live:
        yield live
