"""POST /v1/completions."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from vllm.entrypoints.openai.completion.protocol import CompletionRequest

from server.api.cancellation import cancel_on_disconnect
from server.api.dependencies import read_json_object, require_api_key, serving_engine
from server.api.plain import parse_body
from server.api.render import render_serving_result
from server.engine.vllm import VllmEngine

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post("/v1/completions")
async def create_completion(
    raw_request: Request, engine: VllmEngine = Depends(serving_engine)
) -> Response:
    request = parse_body(CompletionRequest, await read_json_object(raw_request))
    result = await cancel_on_disconnect(
        raw_request, engine.completion.create_completion(request, raw_request)
    )
    return render_serving_result(result)
