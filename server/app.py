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

from fastapi import Depends, FastAPI

from server.admission import AdmissionControl, engine_limits
from server.api import chat, completions, health, metrics, models, strategies
from server.api.dependencies import require_metrics_key
from server.api.error_responses import install_error_handlers
from server.api.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from server.api.openapi_schema import install_openapi
from server.api_keys import ApiKeys
from server.builtin_models import builtin_model
from server.engine.vllm import VllmEngine
from server.lifecycle import Lifecycle
from server.model_cache import ensure_converted
from server.settings import DEFAULT_SERVED_MODEL_NAME, Settings

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

_ENGINE_WATCH_INTERVAL_S = 1.0


async def _load_engine(app: FastAPI, settings: Settings, engine_args: Namespace) -> None:
    lifecycle: Lifecycle = app.state.lifecycle
    try:
        builtin = builtin_model(engine_args.model)
        if builtin is not None:  # no MODEL (the embedded one) or a built-in name
            name = engine_args.model or DEFAULT_SERVED_MODEL_NAME
            folder = await asyncio.to_thread(ensure_converted, builtin, settings.cache_dir)
            engine_args.model = str(folder)
            engine_args.tokenizer = engine_args.tokenizer or str(folder)
            if not engine_args.served_model_name:
                engine_args.served_model_name = [name]
        logger.info("loading model %s", engine_args.model)
        app.state.engine = await VllmEngine.start(engine_args)
        admission: AdmissionControl = app.state.admission
        admission.configure(engine_limits(app.state.engine.async_llm.vllm_config))
        logger.info("admitting up to %d outstanding engine sequences", admission.capacity)
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
        if settings.backend:  # gateway mode: no local engine (server.backend)
            from server.backend.remote_engine import run_gateway

            loader = asyncio.create_task(run_gateway(app, settings))
        else:
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
    app.state.admission = AdmissionControl(bound=settings.max_outstanding_sequences,
                                           queue_factor=settings.queue_factor)
    app.state.api_keys = ApiKeys(settings.api_keys, settings.api_keys_file)

    for module in (health, models, strategies, chat, completions):
        app.include_router(module.router)
    app.include_router(metrics.router, dependencies=[Depends(require_metrics_key)])
    install_error_handlers(app)
    install_openapi(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, lifecycle=app.state.lifecycle)
    return app
