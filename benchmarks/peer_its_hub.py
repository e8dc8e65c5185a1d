"""its_hub 1.2.0's self-consistency as an OpenAI chat endpoint, for `benchmarks/peers.py`.

Runs with the peers' own virtualenv (never Refinery's): `python peer_its_hub.py --backend URL
--port P --budget N --regex PATTERN`. Each chat request runs its_hub's library
`SelfConsistency.ainfer` (`budget` separate n=1 calls to the backend, all in parallel, with no
concurrency cap: see build_app) with the request's own temperature and max_tokens, and votes
with its regex projection on the same final-answer line the task asks for.

Why not its own proxy (`its-iaas`): that proxy drops the request's temperature and max_tokens
and lets the backend's defaults apply (up to the whole context window per sample), so it would
not spend the same sample budget; the library is its_hub at its best, which is the fair peer.
The reply carries its_hub's own usage count and `metadata.calls` (backend calls it made).
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

from aiohttp import web
from its_hub.api.types import GenerationUsage
from its_hub.core.algorithms.self_consistency import (
    SelfConsistency,
    create_regex_projection_function,
)
from its_hub.core.lms.openai_lm import OpenAICompatibleLanguageModel
from its_hub.core.orchestrator import LMOrchestrator


def build_app(backend: str, budget: int, pattern: str) -> web.Application:
    # Unlimited: its default (32, a threading.Semaphore acquired in the default thread pool)
    # stalls at 16 questions x 8 samples on a 2-CPU machine — the pool's 6 threads all wait on
    # the semaphore, aiohttp's host lookups queue behind them and every call times out after
    # 300 s with the backend idle (seen 2026-11-30). Unlimited sends all calls at once, like
    # Refinery's sub-requests; the backend's own scheduler bounds the batch.
    algorithm = SelfConsistency(create_regex_projection_function([pattern]),
                                orchestrator=LMOrchestrator(max_concurrency=-1))
    models: dict[tuple[str, int | None, float | None], OpenAICompatibleLanguageModel] = {}

    def language_model(body: dict[str, Any]) -> OpenAICompatibleLanguageModel:
        key = (str(body["model"]), body.get("max_tokens"), body.get("temperature"))
        if key not in models:
            models[key] = OpenAICompatibleLanguageModel(
                endpoint=backend, api_key="none", model_name=key[0], max_completion_tokens=key[1],
                temperature=key[2])
        return models[key]

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        result = await algorithm.ainfer(language_model(body), list(body["messages"]), budget,
                                        return_response_only=False)
        usage = result.usage or GenerationUsage()
        return web.json_response({
            "id": f"chatcmpl-its-{uuid.uuid4()}", "object": "chat.completion",
            "created": int(time.time()), "model": body["model"],
            "choices": [{"index": 0, "message": result.the_one, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": usage.prompt_tokens,
                      "completion_tokens": usage.completion_tokens,
                      "total_tokens": usage.prompt_tokens + usage.completion_tokens},
            "metadata": {"calls": usage.num_calls}})

    async def models_list(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    app = web.Application(client_max_size=16 * 2**20)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models_list)
    app.router.add_get("/health", models_list)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", required=True, help="the backend's /v1 URL")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--budget", type=int, default=8)
    parser.add_argument("--regex", required=True, help="the answer projection (group 1)")
    args = parser.parse_args()
    web.run_app(build_app(args.backend, args.budget, args.regex), host="127.0.0.1",
                port=args.port, print=None)


if __name__ == "__main__":
    main()
