"""POST /v1/completions (plain, or with a strategy)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from vllm.entrypoints.openai.completion.protocol import CompletionRequest

from server.api.dependencies import require_api_key, serving_engine
from server.api.generation import handle_generation
from server.engine.vllm import VllmEngine

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post("/v1/completions")
async def create_completion(
    raw_request: Request, engine: VllmEngine = Depends(serving_engine)
) -> Response:
    return await handle_generation(
        raw_request, engine, CompletionRequest, engine.completion.create_completion
    )
