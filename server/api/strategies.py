"""GET /v1/strategies: every strategy with its options, generated from the pydantic models
that validate requests, so the listing and the validation cannot disagree."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from server.api.dependencies import require_api_key
from strategies import PRESETS, REGISTRY, Strategy

__all__ = ["describe_options", "router"]

router = APIRouter(dependencies=[Depends(require_api_key)])


def describe_options(strategy: Strategy[Any]) -> dict[str, dict[str, Any]]:
    """Each option's JSON schema (type, default, bounds, description), Optional flattened."""
    schema = strategy.options.model_json_schema()
    options = {}
    for name, prop in schema["properties"].items():
        entry = {k: v for k, v in prop.items() if k != "title"}
        if "anyOf" in entry:  # Optional[...]: flatten to the non-null choice plus null
            choices = entry.pop("anyOf")
            for choice in choices:
                entry.update({k: v for k, v in choice.items() if k != "type"})
            entry["type"] = [choice.get("type", "string") for choice in choices]
        options[name] = entry
    return options


@router.get("/v1/strategies")
async def list_strategies() -> JSONResponse:
    data = [
        {"name": s.name, "description": s.description, "options": describe_options(s)}
        for s in REGISTRY.values()
    ]
    presets = {name: dict(spec) for name, spec in PRESETS.items()}
    return JSONResponse({"object": "list", "data": data, "presets": presets})
