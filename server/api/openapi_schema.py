"""`/openapi.json` for what the generation routes really accept and answer.

The generation routes read the raw body on purpose (`server.api.generation` parses it, so that
every error is OpenAI-shaped), so FastAPI sees no body parameter to document. The schema is
built here from the models that do the validating, never from a hand-written copy: vLLM's
`ChatCompletionRequest` / `CompletionRequest` extended with `strategy`, whose object form is a
union of every registered strategy's options model (each with its `name`) and whose string form
is a preset name; vLLM's response models plus the `strategy` report; and the OpenAI error body
that `ClassifiedError.body()` writes. A strategy, preset or option added to `strategies/`
appears here with no change to this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.json_schema import models_json_schema
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
)
from vllm.entrypoints.openai.completion.protocol import CompletionRequest, CompletionResponse
from vllm.entrypoints.serve.engine.protocol import ModelList

from strategies import PRESETS, REGISTRY, StrategyOptions

__all__ = [
    "ErrorBody",
    "ErrorDetail",
    "generation_openapi",
    "install_openapi",
    "strategy_selection_type",
]

_REF = "#/components/schemas/{model}"

_STRATEGY_DESCRIPTION = (
    "Refinery's extension: run a test-time strategy instead of plain generation. Either a "
    "preset name, or an object with the strategy's `name` and its options (GET "
    "/v1/strategies lists both). Unknown names and options are a 400."
)


class ErrorDetail(BaseModel):
    """The `error` object of every non-2xx answer (`ClassifiedError.body()`)."""

    model_config = ConfigDict(extra="forbid")

    message: str
    type: str = Field(description="OpenAI's error type, e.g. invalid_request_error.")
    param: str | None = Field(description="The request field at fault, dotted.")
    code: str | int | None = Field(description="A machine-readable reason.")


class ErrorBody(BaseModel):
    """OpenAI's error body."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail


def _pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _strategy_object(name: str, options: type[StrategyOptions]) -> type[BaseModel]:
    """The strategy's options model with its `name`: the object form of `strategy`."""
    model: type[BaseModel] = create_model(
        f"{_pascal(name)}Strategy",
        __base__=options,
        __module__=__name__,
        name=(Literal[name], Field(description="The strategy to run.")),
    )
    return model


def strategy_selection_type(
    presets: Mapping[str, Any] = PRESETS, registry: Mapping[str, Any] = REGISTRY
) -> Any:
    """The type of the body field `strategy`: a preset name, or one strategy's options object
    (discriminated by `name`)."""
    objects = tuple(_strategy_object(name, s.options) for name, s in registry.items())
    by_name = Annotated[Union[objects], Field(discriminator="name")]  # noqa: UP007
    preset = Literal[tuple(presets)]
    return Union[preset, by_name]  # noqa: UP007


def _with_strategy(name: str, base: type[BaseModel], strategy: Any) -> type[BaseModel]:
    model: type[BaseModel] = create_model(
        name, __base__=base, __module__=__name__,
        strategy=(strategy | None, Field(default=None, description=_STRATEGY_DESCRIPTION)),
    )
    return model


def _with_report(name: str, base: type[BaseModel]) -> type[BaseModel]:
    model: type[BaseModel] = create_model(
        name, __base__=base, __module__=__name__,
        strategy=(dict[str, Any] | None, Field(
            default=None,
            description="Present when a strategy ran: its name, the samples drawn, the answer, "
            "votes, usage of every sub-request (README.md, \"Strategies\").")),
    )
    return model


def _components() -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(schemas to add to `components`, the `$ref` of each model by role)."""
    strategy = strategy_selection_type()
    models: dict[str, tuple[type[BaseModel], Literal["validation", "serialization"]]] = {
        "chat_request": (_with_strategy("RefineryChatCompletionRequest",
                                        ChatCompletionRequest, strategy), "validation"),
        "completion_request": (_with_strategy("RefineryCompletionRequest",
                                              CompletionRequest, strategy), "validation"),
        "chat_response": (_with_report("RefineryChatCompletionResponse",
                                       ChatCompletionResponse), "serialization"),
        "completion_response": (_with_report("RefineryCompletionResponse",
                                             CompletionResponse), "serialization"),
        "models": (ModelList, "serialization"),
        "error": (ErrorBody, "serialization"),
    }
    refs, schema = models_json_schema(list(models.values()), ref_template=_REF)
    by_role = {role: refs[pair] for role, pair in models.items()}
    return schema.get("$defs", {}), by_role


def _json(ref: Mapping[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": dict(ref)}}}


def _error_responses(refs: Mapping[str, Any]) -> dict[str, Any]:
    error = refs["error"]
    return {
        "400": _json(error, "Invalid request: a field, strategy or option (`param` names it)."),
        "401": _json(error, "API keys are configured and the request has none or a wrong one."),
        "404": _json(error, "The model is not served."),
        "413": _json(error, "The body is over REFINERY_MAX_BODY_BYTES."),
        "429": _json(error, "The server is at capacity (code `overloaded`): retry after "
                     "`Retry-After` seconds."),
        "503": _json(error, "Loading, draining for shutdown, or the engine has stopped."),
        "504": _json(error, "The request ran past REFINERY_REQUEST_TIMEOUT and was aborted."),
        "default": _json(error, "Any other error, in OpenAI's shape."),
    }


# One event of a stream (OpenAPI 3.2's reading of text/event-stream, which schemathesis follows).
_SSE_EVENT = {
    "type": "object",
    "description": "One server-sent event. `data` is a JSON chunk (chat.completion.chunk or "
    "text_completion; a strategy's last chunk carries `strategy`), an OpenAI error object, or "
    "`[DONE]`. Comment lines (`: keep-alive`, `: refinery: <note>`) are not events.",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
    "required": ["data"],
}


def generation_openapi(kind: Literal["chat", "completion"], refs: Mapping[str, Any]
                       ) -> dict[str, Any]:
    """The request body and responses of one generation operation."""
    ok = _json(refs[f"{kind}_response"],
               "The completion; with `stream: true` a server-sent event stream of chunks "
               "ending in `data: [DONE]` (an error after the 200 is a `data: {\"error\": ...}` "
               "event).")
    ok["content"]["text/event-stream"] = {"schema": _SSE_EVENT}
    return {
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": dict(refs[f"{kind}_request"])}}},
        "responses": {"200": ok, **_error_responses(refs)},
    }


_GENERATION_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}


def install_openapi(app: FastAPI) -> None:
    """Make `app.openapi()` (served at /openapi.json) describe the generation bodies,
    responses and errors; built once, on the first request for it."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = get_openapi(title=app.title, version=app.version, routes=app.routes,
                               description=app.description)
        schemas, refs = _components()
        document.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
        paths = document.get("paths", {})
        for path, kind in _GENERATION_PATHS.items():
            if path in paths and "post" in paths[path]:
                paths[path]["post"].update(generation_openapi(kind, refs))  # type: ignore[arg-type]
        if "/v1/models" in paths:
            paths["/v1/models"]["get"]["responses"]["200"] = _json(
                refs["models"], "The served model and its `<model>+<preset>` aliases.")
        if "/metrics" in paths:
            paths["/metrics"]["get"]["responses"]["200"] = {
                "description": "Prometheus text exposition.",
                "content": {"text/plain": {"schema": {"type": "string"}}}}
        if "/ready" in paths:
            paths["/ready"]["get"]["responses"]["503"] = {
                "description": "Not ready: `status` is starting, draining or failed.",
                "content": {"application/json": {"schema": {"type": "object"}}}}
        for operations in paths.values():
            for operation in operations.values():
                operation["responses"].setdefault(
                    "default", _json(refs["error"], "An error, in OpenAI's shape."))
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
