"""GET /health (liveness) and GET /ready (readiness)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from server.lifecycle import Lifecycle

router = APIRouter()


@router.get("/health")
async def health() -> JSONResponse:
    """200 while the process lives and serves HTTP."""
    return JSONResponse({"status": "ok"})


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """200 only once the engine has loaded and while new work is accepted."""
    lifecycle: Lifecycle = request.app.state.lifecycle
    engine = request.app.state.engine
    is_ready = lifecycle.accepting and engine is not None and engine.alive
    return JSONResponse(
        {"status": "ready" if is_ready else lifecycle.phase.value},
        status_code=200 if is_ready else 503,
    )
