"""GET /v1/models."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from server.api.dependencies import require_api_key, serving_engine
from server.engine.vllm import VllmEngine

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.get("/v1/models")
async def list_models(engine: VllmEngine = Depends(serving_engine)) -> JSONResponse:
    models = await engine.models.show_available_models()
    return JSONResponse(content=models.model_dump())
