"""GET /v1/models: the served model, and one alias `<model>+<preset>` per strategy preset
for clients that can only choose a model name."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from server.api.dependencies import require_api_key, serving_engine
from server.engine.vllm import VllmEngine
from strategies import PRESETS

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.get("/v1/models")
async def list_models(engine: VllmEngine = Depends(serving_engine)) -> JSONResponse:
    listing = (await engine.models.show_available_models()).model_dump()
    aliases = [
        {**card, "id": f"{card['id']}+{preset}", "parent": card["id"]}
        for card in listing["data"]
        for preset in PRESETS
    ]
    listing["data"].extend(aliases)
    return JSONResponse(content=listing)
