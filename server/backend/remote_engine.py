"""The engine of gateway mode: no model in this process, an OpenAI-compatible backend instead.

`RemoteEngine` stands where `VllmEngine` stands (`app.state.engine`), with the same surface the
routes use: `chat` / `completion` (plain requests, proxied: `plain_proxy`), `models` (the
backend's model list), `open_sampler` (the `SamplerFactory` of strategy requests:
`remote_sampler`), `alive` and `shutdown`. `alive` is the backend's health as last polled
(GET `<base>/models` every `HEALTH_INTERVAL_S`): `/ready` answers 503 and new requests get a
503 with `Retry-After` while the backend does not answer.

When the backend is a Refinery server (`backend_kind`: asked with every health poll, or set by
`--backend-kind`), `forwards_strategies` is true and the routes send a strategy request whole
through `forward_strategy`: the backend runs the strategy in its own engine and its answer
comes back byte for byte, as a plain request's does.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

import httpx

from server.backend.backend_client import BackendClient, BackendConfig
from server.backend.backend_errors import BackendUnavailable
from server.backend.backend_kind import BackendKind, detect_backend_kind
from server.backend.remote_sampler import RemoteSampler
from server.engine.vllm import OpenedSampler, request_family
from server.exceptions import RefineryError, ServingRefused, excerpt
from strategies.base import CertaintySource

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.requests import Request
    from starlette.responses import Response

    from server.settings import Settings

__all__ = ["HEALTH_INTERVAL_S", "RemoteEngine", "backend_config", "run_gateway"]

logger = logging.getLogger(__name__)

# Seconds between two polls of the backend's model list.
HEALTH_INTERVAL_S = 2.0
# vLLM's default temperature when neither the request nor the model's generation config set
# one (the gateway cannot see the backend's generation config).
_DEFAULT_TEMPERATURE = 1.0


class _ModelListing:
    """The `models` object the /v1/models route asks: the backend's own list."""

    def __init__(self, engine: RemoteEngine) -> None:
        self._engine = engine

    async def show_available_models(self) -> _Listing:
        return _Listing(await self._engine.fetch_models())


class _Listing:
    def __init__(self, listing: dict[str, Any]) -> None:
        self._listing = listing

    def model_dump(self) -> dict[str, Any]:
        return self._listing


class RemoteEngine:
    """A backend behind `BackendClient`, in the shape of the in-process engine."""

    def __init__(self, config: BackendConfig,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        from server.backend.plain_proxy import PlainProxy

        self.client = BackendClient(config, transport)
        proxy = PlainProxy(self.client)
        self._proxy = proxy
        self.chat = proxy
        self.completion = proxy
        self.models = _ModelListing(self)
        self.healthy = False
        self.model_ids: tuple[str, ...] = ()
        # What the backend is: as configured, or (auto) as last detected; until a detection
        # answers, plain, whose remote sampler works with either kind.
        self.kind: BackendKind = "refinery" if config.kind == "refinery" else "openai"

    @property
    def forwards_strategies(self) -> bool:
        """Whether strategy requests go to the backend whole (it is a Refinery server)."""
        return self.kind == "refinery"

    async def forward_strategy(self, request: Any, raw_request: Request
                               ) -> Response | AsyncGenerator[str, None]:
        """A strategy request sent to a Refinery backend as its client sent it (`strategy`
        or a model alias included) and answered byte for byte: the backend runs the strategy
        in its own engine. It carries the session header (the client's value, else one of its
        own), like every backend request of a strategy the gateway runs itself."""
        header = self.client.config.session_header
        session = raw_request.headers.get(header) or f"strategy-{uuid.uuid4().hex}"
        path = "chat/completions" if hasattr(request, "messages") else "completions"
        return await self._proxy.forward(path, request, raw_request, {header: session})

    @property
    def alive(self) -> bool:
        """Whether the backend answered the last health poll."""
        return self.healthy

    def refusal(self) -> BackendUnavailable:
        """What a request gets while the backend is down."""
        return BackendUnavailable("its last health check failed")

    async def fetch_models(self) -> dict[str, Any]:
        """The backend's model list (GET <base>/models), without model aliases a Refinery
        backend lists (the route adds this server's own)."""
        try:
            listing = await self.client.get_json("models")
        except httpx.HTTPStatusError as exc:
            raise ServingRefused(exc.response.status_code, "the model backend refused to list "
                                 "its models") from exc
        data = [card for card in listing.get("data", []) if isinstance(card, dict)
                and not str(card.get("id", "")).startswith(f"{card.get('parent')}+")]
        return {**listing, "data": data}

    async def detect_kind(self) -> None:
        """With `--backend-kind auto`, ask the backend what it is (`backend_kind`); a failed
        question keeps the last answer."""
        if self.client.config.kind != "auto":
            return
        kind = await detect_backend_kind(self.client)
        if kind is not None and kind != self.kind:
            logger.info("model backend %s is %s: strategy requests %s",
                        self.client.config.base_url,
                        "a Refinery server" if kind == "refinery" else "not a Refinery server",
                        "are forwarded whole" if kind == "refinery" else
                        "run in this gateway through its remote sampler")
            self.kind = kind

    async def check_health(self) -> bool:
        """Poll the backend once; remember its models and (auto) what it is. Never raises."""
        try:
            listing, _ = await asyncio.gather(self.fetch_models(), self.detect_kind())
        except (RefineryError, httpx.HTTPError, ValueError) as exc:
            if self.healthy:
                logger.warning("the model backend stopped answering: %s", exc)
            self.healthy = False
            return False
        self.model_ids = tuple(str(card.get("id")) for card in listing["data"])
        if not self.healthy:
            logger.info("model backend %s ready: serving %s", self.client.config.base_url,
                        ", ".join(self.model_ids))
        self.healthy = True
        return True

    async def watch_health(self, interval_s: float = HEALTH_INTERVAL_S) -> None:
        while True:
            await self.check_health()
            await asyncio.sleep(interval_s)

    async def open_sampler(
        self, request: Any, request_id: str, slots: int,
        certainty_source: CertaintySource | None = None,
    ) -> OpenedSampler:
        """A sampler over the backend for one strategy request. The model is checked against
        the backend's list here, so a wrong name is a 404 before a stream's 200; everything
        else the backend checks itself (its refusal reaches the client with its status).
        `slots` is admission's business; the certainty is the top-20 estimate (exact needs the
        in-process plugin) unless `certainty_source` is "none"."""
        kind = "chat" if hasattr(request, "messages") else "completion"
        model = request.model or (self.model_ids[0] if self.model_ids else "")
        if self.model_ids and model not in self.model_ids:
            raise ServingRefused(404, f"The model {excerpt(model)} does not exist.",
                                 param="model", code="model_not_found")
        body = request.model_dump(mode="json", exclude_unset=True)
        sampler = RemoteSampler(self.client, kind, body, request_id,
                                family=request_family(model, request),
                                certainty_source=certainty_source)
        temperature = request.temperature
        return OpenedSampler(sampler, sampler.usage, kind, model,
                             _DEFAULT_TEMPERATURE if temperature is None else temperature,
                             sampler.progress)

    async def shutdown(self) -> None:
        await self.client.aclose()


def backend_config(settings: Settings) -> BackendConfig:
    """The backend settings (REFINERY_BACKEND*) as the client takes them."""
    if settings.backend is None:
        raise ValueError("not in gateway mode: no backend is configured")
    key = settings.backend_api_key
    return BackendConfig(
        base_url=settings.backend,
        api_key=key.get_secret_value() if key is not None else None,
        timeout_s=settings.backend_timeout,
        connect_retries=settings.backend_retries,
        session_header=settings.backend_session_header,
        send_priority=settings.backend_priority,
        kind=settings.backend_kind,
    )


async def run_gateway(app: FastAPI, settings: Settings) -> None:
    """The lifespan task of gateway mode: the engine is ready at once (nothing to load), and
    its `alive` follows the backend's health from then on."""
    # httpx logs every request at INFO: a line per sub-request and per health poll.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    engine = RemoteEngine(backend_config(settings))
    app.state.engine = engine
    logger.info("gateway mode: no local engine; backend %s", settings.backend)
    await engine.check_health()
    app.state.lifecycle.mark_ready()
    await engine.watch_health()
