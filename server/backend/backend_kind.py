"""Is the gateway's backend a Refinery server, or plain vLLM (any OpenAI-compatible server)?

It decides where a strategy runs. A Refinery backend is sent the strategy request whole and
runs it in its own engine: one request on one replica, the fan-out inside that engine with one
shared prefill, exact self-certainty, single-sample aborts and the backend's own admission.
Any other backend gets the strategy's samples from the gateway's remote sampler (n-windows,
the top-20 certainty estimate).

Detection (`--backend-kind auto`, the default) asks `GET <base>/strategies`, which only
Refinery serves: a 200 whose body is the strategies listing (`{"object": "list", "data": [...],
"presets": {...}}`) means Refinery; any other answer (vLLM's 404 above all) means a plain
backend. It costs one small GET and needs no cooperation from the backend beyond the API it
already documents. A transport failure says nothing either way: the previous answer is kept
(and before any answer, the backend is treated as plain, which works with both kinds).
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from server.backend.backend_client import BackendClient, transport_errors
from server.exceptions import RefineryError

__all__ = [
    "BACKEND_KINDS",
    "DETECT_TIMEOUT_S",
    "BackendKind",
    "detect_backend_kind",
    "is_strategies_listing",
]

BackendKind = Literal["refinery", "openai"]
# The values of --backend-kind / REFINERY_BACKEND_KIND.
BACKEND_KINDS = ("auto", "refinery", "openai")
# The longest a detection may take: it runs with every health poll, which must not stall.
DETECT_TIMEOUT_S = 5.0


def is_strategies_listing(document: Any) -> bool:
    """Whether `document` has the shape of Refinery's GET /v1/strategies answer."""
    return (isinstance(document, dict) and document.get("object") == "list"
            and isinstance(document.get("data"), list)
            and isinstance(document.get("presets"), dict)
            and all(isinstance(entry, dict) and "name" in entry for entry in document["data"]))


async def detect_backend_kind(client: BackendClient,
                              timeout_s: float = DETECT_TIMEOUT_S) -> BackendKind | None:
    """Ask the backend what it is; None when it could not be asked (unreachable, silent for
    `timeout_s`, the connection broke), so that the caller keeps what it knew."""
    try:
        return await asyncio.wait_for(_ask(client), timeout_s)
    except TimeoutError:
        return None


async def _ask(client: BackendClient) -> BackendKind | None:
    try:
        response = await client.open("strategies", method="GET")
    except RefineryError:
        return None
    try:
        with transport_errors(client.config.timeout_s):
            await response.aread()
    except RefineryError:
        return None
    finally:
        await asyncio.shield(response.aclose())
    if response.status_code != 200:
        return "openai"
    try:
        document = response.json()
    except ValueError:
        return "openai"
    return "refinery" if is_strategies_listing(document) else "openai"
