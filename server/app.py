"""The FastAPI application: routes, middleware, error handlers, and the engine's lifespan.

The HTTP server starts listening at once; the engine (and, for the embedded model, the one-time
conversion) loads in a background task, so `/health` answers during start-up and `/ready` turns
200 when the engine can take work.
"""

from __future__ import annotations

import asyncio
import logging
from argparse import Namespace
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server.api import chat, completions, health, metrics, models, strategies
from server.api.error_responses import install_error_handlers
from server.api.middleware import RequestContextMiddleware
from server.embedded_model import ensure_embedded_model
from server.engine.vllm import VllmEngine
from server.lifecycle import Lifecycle
from server.settings import DEFAULT_SERVED_MODEL_NAME, Settings

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

_ENGINE_WATCH_INTERVAL_S = 1.0


async def _load_engine(app: FastAPI, settings: Settings, engine_args: Namespace) -> None:
    lifecycle: Lifecycle = app.state.lifecycle
    try:
        if engine_args.model is None:
            folder = await asyncio.to_thread(ensure_embedded_model, settings.cache_dir)
            engine_args.model = str(folder)
            engine_args.tokenizer = engine_args.tokenizer or str(folder)
            if not engine_args.served_model_name:
                engine_args.served_model_name = [DEFAULT_SERVED_MODEL_NAME]
        logger.info("loading model %s", engine_args.model)
        app.state.engine = await VllmEngine.start(engine_args)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        logger.exception("the engine failed to start")
        lifecycle.mark_failed(exc)
        return
    lifecycle.mark_ready()
    logger.info("engine ready: serving %s", ", ".join(engine_args.served_model_name or []))
    await _watch_engine(app.state.engine, lifecycle)


async def _watch_engine(engine: VllmEngine, lifecycle: Lifecycle) -> None:
    """A dead engine core cannot recover: stop the process (non-zero) so that it is restarted,
    rather than keep answering /health with an engine that fails every request."""
    while lifecycle.failure is None:
        if not engine.alive:
            logger.error("the engine core has died: stopping the server")
            lifecycle.mark_failed(RuntimeError("the engine core died"))
            return
        await asyncio.sleep(_ENGINE_WATCH_INTERVAL_S)


def create_app(settings: Settings, engine_args: Namespace) -> FastAPI:
    """Build the app; `engine_args` is the namespace from vLLM's `vllm serve` parser."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(_load_engine(app, settings, engine_args))
        try:
            yield
        finally:
            # The engine may be mid-load in a worker thread, which cannot be interrupted:
            # let the load finish so that the engine process it spawned is shut down too.
            # Once loaded, the task only watches the engine and can be cancelled.
            if app.state.engine is not None:
                loader.cancel()
            await asyncio.wait({loader})
            engine: VllmEngine | None = app.state.engine
            if engine is not None:
                logger.info("shutting the engine down")
                await engine.shutdown()

    app = FastAPI(title="Refinery", lifespan=lifespan)
    app.state.settings = settings
    app.state.lifecycle = Lifecycle(drain_timeout=settings.drain_timeout)
    app.state.engine = None

    for module in (health, metrics, models, strategies, chat, completions):
        app.include_router(module.router)
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware, lifecycle=app.state.lifecycle)
    return app
